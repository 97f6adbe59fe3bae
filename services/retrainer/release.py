"""The release controller: the one owner of the ``champion`` alias after the first model.

A version that passed the offline gate carries ``challenger``; serving runs it in shadow next to the
champion. The controller is a state machine ``idle -> shadow -> bake -> idle``:

- **shadow**: wait for ``release_min_paired_rows`` labelled live rows answered by both versions,
  then the live gate (live_gate.py, paired bootstrap on the same rows, per slice) promotes or
  rejects; no evidence by ``release_shadow_deadline_seconds`` is ``rejected: no live evidence``.
- **bake**: the new champion (the old one keeps ``previous``) is watched ``release_bake_seconds``
  against the previous champion's last figures (serving's 5xx share and p99 from Prometheus, live
  roc_auc overall and per slice from the monitor); a degradation moves ``champion`` back.

:func:`transition` is the whole policy, pure: ``(state, observation, settings, now) -> (state,
actions)``. :class:`ReleaseController` is the wiring: it observes MLflow, the monitor and Prometheus
every ``release_poll_seconds`` in a thread, carries out the actions and persists the state as JSON
under the retrainer's home (the actions first, as ``pending``, so a restart finishes them and
resumes the same phase).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from pipelines.registry import CHALLENGER, CHAMPION, PREVIOUS
from sandbox.settings import Settings
from services.retrainer.live_gate import MIN_SLICE_ROWS, live_gate, roc_auc_upper

log = logging.getLogger("sandbox.release")

IDLE, SHADOW, BAKE = "idle", "shadow", "bake"
PHASES = (IDLE, SHADOW, BAKE)
# Latencies below this are never a regression: on a shared 2-core machine p99 doubles by noise.
MIN_P99_SECONDS = 0.1
# The monitor's latest labelled rows read per observation (paired, or the new champion's in bake):
# enough for the live gate's 2,000 and a bake's recent quality, small enough to read every poll.
RECORDS_LIMIT = 5_000
KEPT_OUTCOMES = 20


@dataclass
class ReleaseState:
    phase: str = IDLE
    champion: str | None = None
    challenger: str | None = None  # the version in shadow (shadow), or just promoted (bake: None)
    previous: str | None = None  # bake: the champion before the promotion, the rollback target
    since: float | None = None  # when the phase began
    deadline: float | None = None  # shadow: no live evidence by then -> rejected; bake: its end
    baseline: dict | None = None  # bake: the previous champion's last figures
    live: dict = field(default_factory=dict)  # the live numbers so far
    waits_for: str = "a challenger (a version that passed the offline gate)"
    outcomes: list[dict] = field(default_factory=list)  # the last decisions, newest last
    pending: list[dict] = field(default_factory=list)  # actions not yet carried out (a restart redoes them)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ReleaseState:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})

    def decided(self, version: str | None) -> bool:
        return any(o["version"] == version for o in self.outcomes)


@dataclass(frozen=True)
class Observation:
    """What the wiring saw this poll (only what the phase needs; None = could not be read)."""

    champion: str | None
    challenger: str | None
    paired_rows: int = 0  # shadow: labelled rows the champion answered with the challenger in shadow
    gate: dict | None = None  # shadow: the live gate on those rows (LiveGateResult.to_dict()), once enough
    serving: dict | None = None  # {"error_rate": float | None, "p99_seconds": float | None}
    quality: dict | None = None  # bake: the champion's live quality, see bake_quality()


# --- the policy, pure -----------------------------------------------------------------------------


def _event(version: str, step: str, outcome: str, reason: str, now: float, **extra) -> dict:
    return {"do": "event", "version": version, "step": step, "outcome": outcome, "reason": reason, "at": now,
            **extra}  # fmt: skip


def _idle(state: ReleaseState, obs: Observation, waits_for: str, outcome: dict | None = None) -> ReleaseState:
    outcomes = [*state.outcomes, outcome][-KEPT_OUTCOMES:] if outcome else state.outcomes
    return ReleaseState(champion=obs.champion, waits_for=waits_for, outcomes=outcomes)


def _start_shadow(
    state: ReleaseState, obs: Observation, s: Settings, now: float
) -> tuple[ReleaseState, list]:
    shadow = ReleaseState(
        phase=SHADOW, champion=obs.champion, challenger=obs.challenger, since=now,
        deadline=now + s.release_shadow_deadline_seconds, outcomes=state.outcomes,
        live={"paired_rows": 0, "needed": s.release_min_paired_rows},
        waits_for=f"{s.release_min_paired_rows} labelled live rows answered by v{obs.champion} and "
        f"v{obs.challenger} in shadow",
    )  # fmt: skip
    reason = f"v{obs.challenger} runs in shadow next to champion v{obs.champion}"
    return shadow, [_event(obs.challenger, "shadow", "started", reason, now)]


def bake_degradation(baseline: dict, serving: dict | None, quality: dict | None, s: Settings) -> str | None:
    """Why the new champion degraded against the previous one's last figures, or None."""
    before = baseline.get("serving") or {}
    if serving:
        rate, rate_before = serving.get("error_rate"), before.get("error_rate") or 0.0
        if rate is not None and rate > rate_before + s.release_max_error_rate_increase:
            return (
                f"serving error rate {rate:.2%} vs {rate_before:.2%} before the promotion "
                f"(allowed +{s.release_max_error_rate_increase:.2%})"
            )
        p99, p99_before = serving.get("p99_seconds"), before.get("p99_seconds")
        if (
            p99 is not None
            and p99_before
            and p99 > max(p99_before * s.release_max_p99_ratio, MIN_P99_SECONDS)
        ):
            return f"p99 latency {p99 * 1000:.0f} ms vs {p99_before * 1000:.0f} ms before (allowed x{s.release_max_p99_ratio:g})"
    # Live quality rolls back only when it is clearly worse: the upper end of the new champion's
    # confidence interval is below the allowed floor. A point estimate on a region's ~120 rows swings
    # by more than the allowed drop (CI failure: 0.7656 vs 0.8754 for a good version), and it is
    # read on every poll, so a point rule would roll a good version back sooner or later.
    figures = baseline.get("quality") or {}
    overall_before = (figures.get("overall") or {}).get("roc_auc")
    if not quality or overall_before is None:
        return None
    judged = []
    if quality["rows"] >= s.release_min_paired_rows:
        judged.append(("", quality["overall"], overall_before, s.release_max_quality_drop, quality["rows"]))
    for name, sliced in sorted(quality.get("slices", {}).items()):
        if sliced["rows"] >= MIN_SLICE_ROWS:
            before_slice = (figures.get("slices") or {}).get(name, {}).get("roc_auc", overall_before)
            judged.append(
                (f"slice {name}: ", sliced, before_slice, s.release_max_slice_quality_drop, sliced["rows"])
            )
    for where, figure, before_figure, drop, rows in judged:
        auc, high = figure.get("roc_auc"), figure.get("roc_auc_high")
        if auc is not None and high is not None and high < before_figure - drop:
            return (
                f"{where}live roc_auc {auc:.4f} (at most {high:.4f} at {s.release_confidence:.0%}) vs "
                f"{before_figure:.4f} of the previous champion (allowed -{drop}, {rows} rows)"
            )
    return None


def transition(
    state: ReleaseState, obs: Observation, s: Settings, now: float
) -> tuple[ReleaseState, list[dict]]:
    """The controller's policy: the next state and the actions that get there (see the module doc)."""
    if state.phase == IDLE:
        fresh = obs.challenger and obs.champion and obs.challenger != obs.champion
        if fresh and not state.decided(obs.challenger):
            return _start_shadow(state, obs, s, now)
        return replace(state, champion=obs.champion, pending=[]), []

    if state.phase == SHADOW:
        version = state.challenger
        if obs.challenger != version or obs.champion != state.champion:
            reason = (
                f"superseded by v{obs.challenger}" if obs.challenger and obs.challenger != obs.champion
                else f"the aliases moved by hand (champion v{obs.champion}, challenger {obs.challenger})"
            )  # fmt: skip
            outcome = {"version": version, "outcome": "ended", "reason": reason, "at": now}
            idle = _idle(state, obs, "a challenger", outcome)
            actions = [_event(version, "shadow", "ended", reason, now)]
            if obs.challenger and obs.challenger != obs.champion and obs.champion:
                shadow, more = _start_shadow(idle, obs, s, now)
                return shadow, actions + more
            return idle, actions
        if obs.gate is not None:
            gate = obs.gate
            decision = "promoted" if gate["promote"] else "rejected"
            tags = {"gate.live.decision": decision, "gate.live.reason": gate["reason"],
                    "gate.live.details": json.dumps(gate)}  # fmt: skip
            actions = [{"do": "tag", "version": version, "tags": tags}]
            actions.append(_event(version, "live gate", decision, gate["reason"], now, rows=gate["rows"]))
            outcome = {"version": version, "outcome": decision, "reason": gate["reason"], "at": now}
            if not gate["promote"]:
                actions.append({"do": "delete_alias", "alias": CHALLENGER})
                return _idle(state, obs, "a challenger", outcome), actions
            actions += [
                {"do": "set_alias", "alias": PREVIOUS, "version": state.champion},
                {"do": "set_alias", "alias": CHAMPION, "version": version},
                {"do": "delete_alias", "alias": CHALLENGER},
                _event(version, "bake", "started", f"champion v{version}, previous v{state.champion}", now),
            ]
            figures = {"overall": {m["metric"]: m["champion"] for m in gate["metrics"]},
                       "slices": {n: {m["metric"]: m["champion"] for m in ms} for n, ms in gate["slices"].items()}}  # fmt: skip
            bake = ReleaseState(
                phase=BAKE, champion=version, previous=state.champion, since=now,
                deadline=now + s.release_bake_seconds, outcomes=[*state.outcomes, outcome][-KEPT_OUTCOMES:],
                baseline={"version": state.champion, "serving": obs.serving, "quality": figures},
                live={"gate": gate["reason"]},
                waits_for=f"the bake to end ({s.release_bake_seconds:.0f}s) with no degradation against v{state.champion}",
            )  # fmt: skip
            return bake, actions
        if now >= (state.deadline or now):
            reason = (
                f"rejected: no live evidence: {obs.paired_rows} of {s.release_min_paired_rows} labelled rows "
                f"answered by both versions within {s.release_shadow_deadline_seconds:.0f}s of shadow"
            )
            tags = {"gate.live.decision": "rejected", "gate.live.reason": reason,
                    "gate.live.details": json.dumps({"paired_rows": obs.paired_rows,
                                                     "needed": s.release_min_paired_rows})}  # fmt: skip
            outcome = {"version": version, "outcome": "rejected", "reason": reason, "at": now}
            actions = [{"do": "tag", "version": version, "tags": tags},
                       _event(version, "live gate", "rejected", reason, now, rows=obs.paired_rows),
                       {"do": "delete_alias", "alias": CHALLENGER}]  # fmt: skip
            return _idle(state, obs, "a challenger", outcome), actions
        live = {"paired_rows": obs.paired_rows, "needed": s.release_min_paired_rows}
        return replace(state, live=live, pending=[]), []

    # BAKE
    version = state.champion
    if obs.champion != version:
        reason = f"the champion moved by hand to v{obs.champion} during the bake"
        outcome = {"version": version, "outcome": "ended", "reason": reason, "at": now}
        return _idle(state, obs, "a challenger", outcome), [_event(version, "bake", "ended", reason, now)]
    why = bake_degradation(state.baseline or {}, obs.serving, obs.quality, s)
    if why:
        reason = f"rolled back to v{state.previous}: {why}"
        outcome = {"version": version, "outcome": "rolled_back", "reason": reason, "at": now}
        actions = [
            {"do": "set_alias", "alias": CHAMPION, "version": state.previous},
            {"do": "tag", "version": version, "tags": {"rolled_back": why}},
            _event(version, "rolled back", "rolled_back", reason, now),
        ]
        return _idle(replace(state, champion=state.previous), replace(obs, champion=state.previous),
                     "a challenger", outcome), actions  # fmt: skip
    live = {"serving": obs.serving, "quality": obs.quality, "gate": state.live.get("gate")}
    if now >= (state.deadline or now):
        reason = f"baked {s.release_bake_seconds:.0f}s with no degradation against v{state.previous}"
        outcome = {"version": version, "outcome": "done", "reason": reason, "at": now}
        return _idle(state, obs, "a challenger", outcome), [_event(version, "done", "done", reason, now)]
    return replace(state, live=live, pending=[]), []


# --- evidence from the monitor's records --------------------------------------------------------


def _frame(records: list[dict]):
    import pandas as pd

    rows = [{**(r.get("features") or {}), **{k: v for k, v in r.items() if k != "features"}} for r in records]
    return pd.DataFrame(rows)


def paired_evidence(records: list[dict], champion: str, challenger: str, s: Settings, slice_by: str | None):
    """``(rows, gate)``: the labelled rows the champion answered with the challenger in shadow, and the
    live gate on them once there are enough (else None)."""
    frame = _frame(records)
    if frame.empty or "shadow_probability" not in frame:
        return 0, None
    frame = frame[
        (frame["model_version"].astype(str) == champion)
        & (frame["shadow_version"].astype(str) == challenger)
        & frame["label"].notna()
        & frame["shadow_probability"].notna()
    ]
    if len(frame) < s.release_min_paired_rows:
        return len(frame), None
    gate = live_gate(
        frame["label"].astype(int).to_numpy(), frame["probability"].astype(float).to_numpy(),
        frame["shadow_probability"].astype(float).to_numpy(),
        frame[slice_by].to_numpy() if slice_by and slice_by in frame else None,
        s.release_tolerances, s.release_slice_tolerances, s.release_bootstrap_resamples,
        s.release_confidence, seed=0, slice_name=slice_by or "slice",
    )  # fmt: skip
    return len(frame), gate.to_dict()


def bake_quality(records: list[dict], version: str, slice_by: str | None, confidence: float) -> dict:
    """The bake's evidence, the labelled rows ``version`` answered: roc_auc overall and per slice,
    each with the upper end of its ``confidence`` interval (``roc_auc_high``) and its row count.
    (The monitor's ``live_quality`` is another figure: accuracy and f1 over its labelled window.)"""
    frame = _frame(records)
    if frame.empty:
        return {"rows": 0, "overall": {}, "slices": {}}
    frame = frame[(frame["model_version"].astype(str) == version) & frame["label"].notna()]

    def auc(part) -> dict:
        found = roc_auc_upper(
            part["label"].astype(int).to_numpy(), part["probability"].astype(float).to_numpy(), confidence
        )  # None for no rows or one class
        return (
            {"roc_auc": round(found[0], 5), "roc_auc_high": round(found[1], 5)}
            if found
            else {"roc_auc": None}
        )

    out = {"rows": len(frame), "overall": auc(frame), "slices": {}}
    if slice_by and slice_by in frame:
        for value, part in frame.groupby(frame[slice_by].astype(str)):
            out["slices"][f"{slice_by}={value}"] = {"rows": len(part), **auc(part)}
    return out


# --- the wiring -----------------------------------------------------------------------------------

ERROR_RATE = (
    '(sum(rate(bentoml_service_request_total{endpoint="/predict", http_response_code=~"5.."}[1m])) or vector(0))'
    ' / sum(rate(bentoml_service_request_total{endpoint="/predict"}[1m]))'
)
P99 = (
    "histogram_quantile(0.99, sum by (le) "
    '(rate(bentoml_service_request_duration_seconds_bucket{endpoint="/predict"}[1m])))'
)


class ReleaseController:
    """Polls, decides with :func:`transition`, acts, persists. ``on_event(event)`` tells the retrainer
    (its history) and ``on_rollback()`` counts a rollback for ``ModelRolledBack``."""

    def __init__(
        self,
        settings: Settings,
        mlflow_client,
        http,
        on_event: Callable[[dict], None] = lambda event: None,
        on_state: Callable[[ReleaseState], None] = lambda state: None,
        clock: Callable[[], float] = time.time,
    ):
        from pipelines.features import LOAN_SCHEMA

        self.settings, self.client, self.http = settings, mlflow_client, http
        self.on_event, self.on_state, self.clock = on_event, on_state, clock
        self.slice_by = LOAN_SCHEMA.slice_by
        self.path: Path = settings.home / "retrainer" / "release.json"
        self.lock = threading.Lock()
        self.state = self._load()
        self.error: str | None = None  # the last poll's failure (retried next poll)
        self.died: str | None = None  # the thread's death: shown, never silent
        self.polls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        on_state(self.state)

    def _load(self) -> ReleaseState:
        try:
            state = ReleaseState.from_dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            log.info("no release state at %s yet: starting idle", self.path)
            return ReleaseState()
        except (ValueError, TypeError) as exc:  # a file cut short: start idle, say so
            log.error("release state %s unreadable (%s): starting idle", self.path, exc)
            return ReleaseState()
        log.info("release state resumed from %s: %s since %s", self.path, state.phase, state.since)
        return state

    def _save(self, state: ReleaseState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.to_dict()))
        tmp.replace(self.path)  # atomic: a crash leaves the old state or the new one

    # observations
    def _alias(self, alias: str) -> str | None:
        from pipelines.registry import alias_version

        found = alias_version(self.client, self.settings.model_name, alias)
        return found.version if found else None

    def _records(self, **params) -> list[dict]:
        response = self.http.get(
            f"{self.settings.monitor_url.rstrip('/')}/api/records",
            params={"labelled": "true", "limit": RECORDS_LIMIT, **params}, timeout=30,
        )  # fmt: skip
        response.raise_for_status()
        return response.json()["records"]

    def _prometheus(self, query: str) -> float | None:
        try:
            response = self.http.get(
                f"{self.settings.prometheus_url}/api/v1/query", params={"query": query}, timeout=5
            )
            result = response.json()["data"]["result"]
            value = float(result[0]["value"][1]) if result else None
        except Exception:  # Prometheus down: the figure is unknown, never a degradation
            return None
        return None if value is None or np.isnan(value) else value

    def serving_figures(self) -> dict:
        return {"error_rate": self._prometheus(ERROR_RATE), "p99_seconds": self._prometheus(P99)}

    def observe(self, state: ReleaseState) -> Observation:
        champion, challenger = self._alias(CHAMPION), self._alias(CHALLENGER)
        if state.phase == SHADOW and challenger == state.challenger and champion == state.champion:
            records = self._records(shadow_version=challenger)
            rows, gate = paired_evidence(records, champion, challenger, self.settings, self.slice_by)
            serving = self.serving_figures() if gate else None
            return Observation(champion, challenger, paired_rows=rows, gate=gate, serving=serving)
        if state.phase == BAKE and champion == state.champion:
            records = self._records(model_version=champion, since=state.since)
            quality = bake_quality(records, champion, self.slice_by, self.settings.release_confidence)
            return Observation(champion, challenger, serving=self.serving_figures(), quality=quality)
        return Observation(champion, challenger)

    # actions
    def _act(self, action: dict) -> None:
        name = self.settings.model_name
        if action["do"] == "set_alias":
            self.client.set_registered_model_alias(name, action["alias"], action["version"])
        elif action["do"] == "delete_alias":
            from mlflow.exceptions import MlflowException

            try:
                self.client.delete_registered_model_alias(name, action["alias"])
            except MlflowException as exc:  # already gone (a redone action): fine
                if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                    raise
        elif action["do"] == "tag":
            for key, value in action["tags"].items():
                self.client.set_model_version_tag(name, action["version"], key, str(value)[:5000])
        elif action["do"] == "event":
            log.info(
                "release v%s: %s %s: %s",
                action["version"],
                action["step"],
                action["outcome"],
                action["reason"],
            )
            self.on_event(action)

    def _apply(self, state: ReleaseState, actions: list[dict]) -> ReleaseState:
        """Persist the state with its actions pending, carry them out, persist it done."""
        state = replace(state, pending=actions)
        self._save(state)
        for action in actions:
            self._act(action)
        state = replace(state, pending=[])
        self._save(state)
        return state

    def tick(self) -> ReleaseState:
        """One poll: finish pending actions (a restart), observe, decide, act."""
        with self.lock:
            state = self.state
            if state.pending:
                state = self._apply(state, state.pending)
            obs = self.observe(state)
            new, actions = transition(state, obs, self.settings, self.clock())
            if actions or new != state:
                new = self._apply(new, actions) if actions else new
                if not actions:
                    self._save(new)
            self.state = new
            self.polls += 1
        self.on_state(new)
        return new

    def rollback(self, to: str | None, load_check: Callable[[str], None]) -> dict:
        """``sandbox rollback``: champion -> ``to`` (default: ``previous``) after it loads; ends any phase."""
        with self.lock:
            target = to or self._alias(PREVIOUS)
            champion = self._alias(CHAMPION)
            if target is None:
                raise ValueError("no `previous` version to roll back to; name one with --to VERSION")
            if target == champion:
                raise ValueError(f"v{target} is already the champion")
            from mlflow.exceptions import MlflowException

            try:
                self.client.get_model_version(self.settings.model_name, target)
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                    raise  # MLflow down: a 503, not "no such version"
                raise ValueError(f"{self.settings.model_name} has no version {target}") from exc
            load_check(target)  # raises ValueError naming why it does not load
            now = self.clock()
            reason = f"rolled back by hand from v{champion} to v{target}"
            actions = [{"do": "set_alias", "alias": CHAMPION, "version": target}]
            if champion:
                actions += [{"do": "set_alias", "alias": PREVIOUS, "version": champion},
                            {"do": "tag", "version": champion, "tags": {"rolled_back": reason}},
                            _event(champion, "rolled back", "rolled_back", reason, now, by="hand")]  # fmt: skip
            outcome = {"version": champion, "outcome": "rolled_back", "reason": reason, "at": now}
            idle = ReleaseState(champion=target, outcomes=[*self.state.outcomes, outcome][-KEPT_OUTCOMES:],
                                waits_for="a challenger")  # fmt: skip
            if self.state.phase == SHADOW:  # its pairing was against the old champion
                actions.append({"do": "delete_alias", "alias": CHALLENGER})
            self.state = self._apply(idle, actions)
        self.on_state(self.state)
        return {"champion": target, "was": champion, "reason": reason}

    def status(self) -> dict:
        state = self.state.to_dict()  # one reference read: no lock, a poll may hold it for seconds
        state.pop("pending", None)
        return {
            **state,
            "alive": self.died is None,
            "died": self.died,
            "error": self.error,
            "polls": self.polls,
        }

    # the thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="release-controller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.tick()
                    self.error = None
                except Exception as exc:  # MLflow or the monitor down: said, retried next poll
                    self.error = f"{type(exc).__name__}: {str(exc)[:300]}"
                    log.warning("release poll failed: %s", self.error)
                self._stop.wait(self.settings.release_poll_seconds)
        except BaseException as exc:  # reported on /api/release, never a silent stop
            self.died = f"{type(exc).__name__}: {exc}"
            log.error("the release controller died: %s\n%s", self.died, traceback.format_exc())

    def stop(self) -> None:
        self._stop.set()
