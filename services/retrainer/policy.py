"""When an Alertmanager notification starts a retraining: a pure function over the retrainer's memory.

Order of the checks (the first that applies wins, each is a ``reason`` label on
``sandbox_retrain_skips_total``):

1. ``resolved``: no firing alert that asks for a retraining (``action="retrain"``) in the notification.
2. ``in_progress``: a retraining is running; it will pick up the same production data.
3. ``duplicate``: the same alert (fingerprint and start time) already started a retraining
   within the cooldown; Alertmanager re-sends a firing group every ``group_interval`` and
   retries failed deliveries.
4. ``cooldown``: another alert started a retraining less than ``cooldown_seconds`` ago.

An alert still firing after the cooldown starts a new retraining: the last one did not fix it.
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
    within = [a for a in firing if now - recent_keys.get(alert_key(a), -float("inf")) < cooldown_seconds]
    if len(within) == len(firing):
        return Decision(SKIP, "duplicate", firing[0])
    if last_trigger_at is not None and now - last_trigger_at < cooldown_seconds:
        return Decision(SKIP, "cooldown", firing[0])
    fresh = [a for a in firing if a not in within]
    return Decision(TRIGGER, "alert", fresh[0])
