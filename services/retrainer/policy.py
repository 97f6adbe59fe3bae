"""When an Alertmanager notification starts a retraining: a pure function over the retrainer's memory.

Order of the checks (the first that applies wins, each is a ``reason`` label on
``sandbox_retrain_skips_total``):

1. ``resolved``: no firing alert that asks for a retraining (``action="retrain"``) in the notification.
2. ``in_progress``: a retraining is running; it will pick up the same production data.
   ``release_in_progress``: a challenger is in shadow or a promotion bakes (release.py). The alert
   still fires on the old champion's traffic until the live gate decides; a second retraining now
   would replace the challenger being judged.
3. ``duplicate``: the same alert (fingerprint and start time) already started a retraining
   within the cooldown; Alertmanager re-sends a firing group every ``group_interval`` and
   retries failed deliveries.
4. ``cooldown``: another alert started a retraining less than ``cooldown_seconds`` ago.

An alert still firing after the cooldown starts a new retraining: the last one did not fix it.

Then one more check before a retraining starts (``quality_hold``, reason ``data_quality``): the
monitor's own data-quality verdict on the live window. Alertmanager already inhibits retrain alerts
while a data-quality alert fires; this is the second, independent guard (an inhibit rule edited away,
a quality alert still in its ``for:``, a notification sent by hand). Retrain only when the world
changed, never when the pipeline broke.
"""

from __future__ import annotations

from dataclasses import dataclass

TRIGGER, SKIP = "trigger", "skip"


@dataclass(frozen=True)
class Decision:
    action: str  # TRIGGER | SKIP
    reason: str
    alert: dict | None = None  # the alert that triggers (labels, annotations, startsAt, fingerprint)


def alert_key(alert: dict) -> str:
    return f"{alert.get('fingerprint') or alert['labels'].get('alertname')}@{alert.get('startsAt')}"


def decide(
    notification: dict,
    running: bool,
    last_trigger_at: float | None,
    recent_keys: dict[str, float],
    now: float,
    cooldown_seconds: float,
    releasing: bool = False,
) -> Decision:
    """``recent_keys``: alert key -> when it triggered. See the module docstring for the order."""
    firing = [
        a
        for a in notification["alerts"]
        if a["status"] == "firing" and a["labels"].get("action") == "retrain"
    ]
    if not firing:
        return Decision(SKIP, "resolved")
    if running:
        return Decision(SKIP, "in_progress", firing[0])
    if releasing:
        return Decision(SKIP, "release_in_progress", firing[0])
    within = [a for a in firing if now - recent_keys.get(alert_key(a), -float("inf")) < cooldown_seconds]
    if len(within) == len(firing):
        return Decision(SKIP, "duplicate", firing[0])
    if last_trigger_at is not None and now - last_trigger_at < cooldown_seconds:
        return Decision(SKIP, "cooldown", firing[0])
    fresh = [a for a in firing if a not in within]
    return Decision(TRIGGER, "alert", fresh[0])


def quality_hold(monitor_status: dict | None) -> str | None:
    """Why the live data is not fit to retrain on (the monitor's ``quality`` verdict), or None.

    Only a verdict that says "failed" holds: no window judged yet (``ok`` null) or no answer from the
    monitor lets the retraining start. A retraining reads its production rows from the monitor, so
    with the monitor gone it fails in load-data, visibly, and cannot learn from broken rows either.
    """
    quality = (monitor_status or {}).get("quality")
    if not isinstance(quality, dict) or quality.get("ok") is not False:
        return None
    failed = [f for f in quality.get("failed") or [] if isinstance(f, dict)]
    named = "; ".join(
        str(f.get("message") or f"{f.get('check')} on {f.get('feature')}") for f in failed[:3]
    )  # fmt: skip
    return f"the monitor's data-quality checks failed on the live window: {named or 'no detail given'}"
