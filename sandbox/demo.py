"""`sandbox demo`: the whole loop on the embedded stack, timed.

up -> train v1 -> clean traffic with labels (no alert) -> incident -> DataDriftDetected fires
-> the retrainer starts -> v2 registered and promoted by the gate -> serving swaps -> drift
on v2's traffic is judged "no drift" -> the alert resolves. Each step waits for the real
signal (Prometheus, MLflow, serving's /model, the monitor's verdict), never for a fixed time,
and the report plots what Prometheus recorded over the run.

The second story (``--story upstream-bug``) is the loop refusing to learn a bug: up -> train v1 ->
clean traffic -> a client starts sending income in thousands (``unit_change``, every value still in
range) -> DataQualityDegraded fires -> a human is notified and the retraining is held (Alertmanager's
inhibit rule, or the retrainer's own check) -> the client is fixed -> the alert resolves -> the
champion is still v1 and nothing was retrained.

The third (``--story bad-release``) is the release guarding itself: up -> train v1 -> clean traffic
-> a version trained on rows whose labels a broken join inverted passes the offline gate -> the live
gate rejects it in shadow (it answered nobody) -> a version trained for a market launch whose labels
were inverted passes both gates (no launch traffic yet) -> it serves -> the launch's traffic comes ->
the bake sees the new region's live quality collapse and moves the champion back to v1 -> serving
swaps back -> ModelRolledBack pages a human.

The demo runs the stack with a *profile* of short intervals (``DEMO_OVERRIDES``): it is written
into the services' supervisord environment, so a later ``sandbox up`` goes back to the defaults.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pipelines.result import TrainResult
from sandbox.background import Background, BackgroundDied
from sandbox.settings import Settings
from sandbox.status import (
    alert_firing,
    champion,
    inhibited_alerts,
    monitor_status,
    prometheus_alerts_page,
    release_status,
    retrainer_status,
    served_version,
    workers_serving,
)
from sandbox.traffic import MAX_DURATION_S, TrafficControl, TrafficSummary, as_dict, run_traffic

# Short intervals so the story takes minutes: the monitor judges every 5 s, the alert needs 10 s
# instead of 1 min. The sizes are the measured ones (docs/drift-statistics.md): 1,500-row windows
# against v2's 2,000-row reference (rows served after the alert) keep false alarms under 1 % per
# verdict, and every scripted incident still alerts within 60 s at 60 rows/s (the demo sends 120).
DEMO_OVERRIDES: dict = {
    "monitor_interval_seconds": 5,
    "monitor_window_rows": 1500,
    "monitor_min_rows": 1500,
    "serving_poll_seconds": 2,
    "retrain_cooldown_seconds": 180,
    "retrain_min_production_rows": 300,
    "retrain_drift_reference_rows": 2000,
    "alert_for_overrides": {
        "DataDriftDetected": "10s",
        "DataQualityDegraded": "10s",
        "InputRejectionsHigh": "10s",
    },
    # The release: the controller polls often; v2 bakes 30 s (the watch is the point, not its length).
    # The live gate keeps its 2,000 paired rows: about 35 s of the demo's traffic with its labels.
    "release_poll_seconds": 2,
    "release_bake_seconds": 30,
    "alertmanager_group_wait": "1s",
    "alertmanager_group_interval": "5s",
}
# The services read these from their environment; Prometheus and Alertmanager get rendered files.
SERVICE_KEYS = ("monitor_", "serving_poll", "retrain_", "release_")
ALERT = "DataDriftDetected"
QUALITY_ALERT = "DataQualityDegraded"
STORIES = ("covariate-shift", "upstream-bug", "bad-release")
UPSTREAM_BUG = "unit_change"  # the incident of the upstream-bug story
BAD_RELEASE = (
    "label_bug"  # the bad-release story: a version trained on rows whose labels a broken join inverted
)
# Its second act: a version trained for a market launch whose labels a broken join inverted, then the
# launch's traffic (the new region, true labels) once that version serves.
LATE_REGRESSION, LAUNCH = "launch_label_bug", "new_category"
ROLLBACK_ALERT = "ModelRolledBack"
# How the release controller ends a shadow and a bake (its outcomes, services/retrainer/release.py).
GATE_ENDS, BAKE_ENDS = ("promoted", "rejected", "ended"), ("rolled_back", "done", "ended")
# Per story, on top of DEMO_OVERRIDES: the late regression's bake must outlast the launch's first
# labelled rows (serving swaps, ~100 labelled rows of the new region, a poll: ~20 s on a quiet machine).
STORY_OVERRIDES: dict[str, dict] = {"bad-release": {"release_bake_seconds": 60}}
# The bad releases' training seeds: rows v1 (seed 0) never saw. With v1's own seed the new holdout
# holds rows v1 trained on (the split stratifies by the changed labels), v1 scores higher there than
# it is, and the offline slice check rejected the bad release before the live gate could (measured).
BAD_RELEASE_SEED, LATE_REGRESSION_SEED = 1, 2
# Rows arrive four times as fast as requests (120 rows/s): every wait on data (the windows the
# monitor judges, the rows served after the alert that become v2's reference, the shadow's paired
# labelled rows, the bake's) takes a quarter as long as with single rows, at a request rate the
# one-connection traffic client keeps up with on a busy 2-core machine. The window and reference
# sizes, hence the false-alarm rate, do not change with the rate.
DEMO_ROWS_PER_REQUEST = 4


class DemoError(RuntimeError):
    def __init__(self, step: str, message: str):
        super().__init__(f"{step}: {message}")
        self.step = step


def demo_settings(base: Settings | None = None, story: str = "covariate-shift", **overrides) -> Settings:
    base = base or Settings()
    return base.model_copy(update={**DEMO_OVERRIDES, **STORY_OVERRIDES.get(story, {}), **overrides})


def profile_env(settings: Settings) -> dict[str, str]:
    """The demo's service settings as ``SANDBOX_*`` variables for the supervisord config."""
    return {
        f"SANDBOX_{key.upper()}": str(getattr(settings, key))
        for key in DEMO_OVERRIDES
        if key.startswith(SERVICE_KEYS)
    }


@dataclass
class Timeline:
    started: float = field(default_factory=time.time)
    events: list[dict] = field(default_factory=list)
    on_event: Callable[[dict], None] = lambda event: None

    def add(self, name: str, detail: str = "", at: float | None = None) -> float:
        at = time.time() if at is None else at
        event = {"event": name, "at": at, "t": round(at - self.started, 1), "detail": detail}
        self.events.append(event)
        self.on_event(event)
        return at


# --- what the demo watches -----------------------------------------------------------------------

# What a poll may meet while a service starts or swaps: not an answer yet, poll again.
TRANSIENT = (httpx.HTTPError, ValueError, KeyError)


def retraining_since(settings: Settings, since: float) -> dict | None:
    """The retraining running now, or the last one if it started after ``since``."""
    status = retrainer_status(settings)
    if status is None:
        return None
    last = status["last"]
    return status["running"] or (last if last and last["started_at"] > since else None)


def retraining_record(settings: Settings, run_id: str) -> dict | None:
    """The retrainer's record of ``run_id`` once the pipeline has finished (offline gate decided), else None."""
    status = retrainer_status(settings)
    if status is None:
        return None
    last = status["last"]
    return last if status["running"] is None and last and last["id"] == run_id else None


def retraining_done(settings: Settings, run_id: str) -> dict | None:
    record = retraining_record(settings, run_id)
    # A challenger in shadow has not finished: the release controller's live gate decides (docs/releases.md).
    return record if record and record["state"] != "shadow" else None


def records_count(settings: Settings, limit: int = 1, **params) -> int:
    """Records the monitor holds that match ``params`` (``model_version``, ``since``...), counted up to
    ``limit``: the count of one page of the latest records, enough to tell "none", "some" or "enough"."""
    page = httpx.get(f"{settings.monitor_url}/api/records", params={**params, "limit": limit}, timeout=30)
    page.raise_for_status()
    return page.json()["count"]


def path_step(record: dict, step: str) -> dict | None:
    """The latest entry ``step`` of a retraining's path (offline gate, shadow, live gate, bake, done...)."""
    return next((p for p in reversed(record.get("path") or []) if p["step"] == step), None)


def paged_since(settings: Settings, alertname: str, since: float) -> dict | None:
    """The first firing notification of ``alertname`` the human receiver got after ``since``."""
    for note in reversed((retrainer_status(settings) or {}).get("notifications", [])):
        fired = [a for a in note["alerts"] if a["alertname"] == alertname and a["status"] == "firing"]
        if note["received_at"] > since and fired:
            return {**note, "alert": fired[0]}
    return None


def retraining_held(settings: Settings, since: float) -> str | None:
    """How a retraining was held since ``since``: the retrainer's own check, or Alertmanager's inhibit rule."""
    held = [h for h in (retrainer_status(settings) or {}).get("held", []) if h["at"] > since]
    if held:
        return f"the retrainer held {held[-1]['alertname']}: {held[-1]['reason']}"
    inhibited = [a for a in inhibited_alerts(settings) or [] if a["action"] == "retrain"]
    if inhibited:
        return f"Alertmanager inhibits {inhibited[0]['name']} (inhibited by {QUALITY_ALERT})"
    return None


def verdict_on(settings: Settings, version: str, after: float) -> dict | None:
    """The monitor's latest sufficient verdict on ``version`` made after ``after``, if any."""
    drift = (monitor_status(settings) or {}).get("drift")
    if (
        drift
        and drift.get("model_version") == version
        and drift["evaluated_at"] > after
        and drift["drift_share"] is not None
    ):
        return drift
    return None


# --- the story -----------------------------------------------------------------------------------


@dataclass
class DemoResult:
    completed: bool
    time_to_detect_s: float | None = None
    time_to_retrain_s: float | None = None
    time_to_recover_s: float | None = None
    quality_alert_s: float | None = None  # upstream-bug: incident -> DataQualityDegraded firing
    shadow_s: float | None = None  # v2 in shadow -> the live gate's decision
    live_gate: str | None = None  # the live gate's reason, with its numbers
    bake_s: float | None = None  # v2 champion -> the bake's verdict
    rollback: str | None = None  # bad-release: why the bake rolled the late regression back
    retrained: bool | None = None  # whether any retraining ran because of the incident
    story: str = "covariate-shift"
    champion_before: str | None = None
    champion_after: str | None = None
    requests: int = 0
    failed_requests: int = 0
    report: str | None = None
    failed_step: str | None = None
    error: str | None = None
    events: list[dict] = field(default_factory=list)
    traffic: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """What ``sandbox demo --json`` prints: the timings, the versions, requests and failures."""
        keys = ["completed", "story", "time_to_detect_s", "time_to_retrain_s", "time_to_recover_s",
                "quality_alert_s", "retrained", "shadow_s", "live_gate", "bake_s", "rollback",
                "champion_before", "champion_after", "requests", "failed_requests", "report"]  # fmt: skip
        if not self.completed:
            keys += ["failed_step", "error"]
        return {key: getattr(self, key) for key in keys}


class Demo:
    """The story, one method per step; every wait is bounded and fails naming its step.

    Every wait also checks the demo's own traffic: if it died or stalled, the demo fails at once
    naming it, instead of waiting out a timeout for a signal that can no longer come.
    """

    def __init__(
        self,
        settings: Settings,
        timeline: Timeline,
        scenario: str = "covariate_shift",
        severity: float = 1.0,
        rps: float = 30.0,
        rows_per_request: int = DEMO_ROWS_PER_REQUEST,
        clean_evaluations: int = 3,
        timeout: float = 600.0,
        on_status: Callable[[str], None] = lambda message: None,
        train_step: Callable[[Settings], TrainResult] | None = None,
        story: str = "covariate-shift",
    ):
        if story not in STORIES:
            raise ValueError(f"unknown story {story!r}; choose one of {', '.join(STORIES)}")
        self.settings, self.timeline, self.on_status = settings, timeline, on_status
        self.scenario, self.severity, self.rps, self.rows_per_request = (
            scenario,
            severity,
            rps,
            rows_per_request,
        )
        self.clean_evaluations, self.timeout = clean_evaluations, timeout
        self.train_step = train_step or train_v1
        self.story = story
        self.result = DemoResult(completed=False, events=timeline.events, story=story)
        self.control = TrafficControl()
        self.traffic: Background | None = None
        self.retrain_run: str | None = None  # the retrainer's id of the incident's retraining
        self.shadow_at = 0.0  # when v2 (or the bad release) went into shadow
        self.bad_version: str | None = None  # the bad-release story's version
        self.late_version: str | None = None  # its second act's version
        self.promoted_at = 0.0  # when the live gate promoted it
        # Seconds to fill one window the monitor judges, at the demo's row rate.
        self.fill = settings.monitor_min_rows / (rps * rows_per_request)

    def wait(
        self, step: str, check: Callable[[], object], timeout: float, interval: float = 1.0, hint: str = ""
    ):
        """Poll ``check`` until it returns something truthy; a timeout is a DemoError naming the step."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.traffic is not None:
                try:
                    self.traffic.check()
                except BackgroundDied as exc:
                    raise DemoError(step, f"{exc}; no traffic, no signal: the demo stops here") from exc
            try:
                value = check()
            except TRANSIENT:
                value = None
            if value:
                return value
            time.sleep(interval)
        hint = hint or self.where_to_look(step)
        raise DemoError(step, f"did not happen within {timeout:.0f}s{'; ' + hint if hint else ''}")

    def where_to_look(self, step: str) -> str:
        """What to open when ``step`` times out (docs/troubleshooting.md walks through each)."""
        s, logs = self.settings, self.settings.logs_dir
        status_page, alerts = f"the monitor's status page {s.monitor_url}/", prometheus_alerts_page(s)
        retrainer = f"{s.retrainer_url}/api/status and {logs / 'retrainer.log'}"
        return {
            "clean traffic": f"see {status_page} (verdicts, rows) and {logs / 'monitor.log'}",
            "alert fires": f"see {alerts} (the rule's state), {status_page} and {logs / 'prometheus.log'}",
            "retraining held: data quality": f"see {retrainer}",
            "retraining finishes": f"see {retrainer} (the run's log path) and {logs}/train-*.log",
            "serving swaps to v2": f"see {logs / 'serving.log'}",
            "serving swaps to the late version": f"see {logs / 'serving.log'}",
            "serving swaps back": f"see {logs / 'serving.log'} and `sandbox release status`",
            "drift falls on v2": f"see {status_page} (rows judged for v2) and {logs / 'monitor.log'}",
            "alert resolves": f"see {alerts} and {status_page}",
            f"{QUALITY_ALERT} resolves": f"see {alerts} and {status_page} (data quality)",
            "bake ends": f"see `sandbox release status` (what the bake watches) and {logs / 'retrainer.log'}",
            "bake rolls back": f"see `sandbox release status` (what the bake watches) and {logs / 'retrainer.log'}",
            f"{ROLLBACK_ALERT} pages a human": f"see {alerts}, {logs / 'alertmanager.log'} and {retrainer}",
        }.get(step, "")

    def steps(self) -> list[Callable[[], None]]:
        """The story's steps in order: the first four are the same for every story."""
        opening = [self.start_stack, self.train_v1, self.start_traffic, self.clean_traffic]
        if self.story == "upstream-bug":
            return [*opening, self.upstream_bug, self.retraining_held, self.upstream_fixed]
        if self.story == "bad-release":
            return [
                *opening, self.bad_release, self.bad_release_rejected, self.late_regression, self.rolled_back,
            ]  # fmt: skip
        return [*opening, self.incident, self.retraining, self.live_gate, self.recovery, self.bake]

    def run(self, after_step: Callable[[str], None] = lambda name: None) -> DemoResult:
        """The steps in order, then the report; ``after_step(name)`` runs after each (docs/screenshots.py)."""
        try:
            for step in self.steps():
                step()
                after_step(step.__name__)
            self.result.completed = True
        except DemoError as exc:
            self.result.failed_step, self.result.error = exc.step, str(exc)
            self.timeline.add("failed", str(exc))
        finally:
            self.stop_traffic()
        try:
            # The alert the story turns on: the report plots its state.
            alert = {"upstream-bug": QUALITY_ALERT, "bad-release": ROLLBACK_ALERT}.get(self.story, ALERT)
            self.result.report = str(write_report(self.settings, self.timeline, self.result, alert=alert))
        except (httpx.HTTPError, OSError, KeyError, ValueError) as exc:  # the story stands without its plots
            self.timeline.add("report failed", str(exc)[:200])
        return self.result

    def start_stack(self) -> None:
        from sandbox import local_stack

        self.on_status("starting the stack with the demo profile...")
        if (
            missing := local_stack.missing_monitoring()
        ):  # the story waits on alerts: say so now, not at a timeout
            raise DemoError("stack up", local_stack.missing_monitoring_message(missing))
        if moved := local_stack.move_state_aside(self.settings):  # every story starts with no champion
            self.timeline.add(
                "fresh state", f"an earlier run's state moved to {moved} (`make clean` removes it)"
            )
        try:
            local_stack.up(
                self.settings,
                timeout=300,
                profile=profile_env(self.settings),
                on_ready=lambda n: self.on_status(f"{n} is up"),
            )
        except local_stack.StackError as exc:
            raise DemoError("stack up", str(exc)) from exc
        self.timeline.add("stack up")

    def train_v1(self) -> None:
        self.on_status("train-and-register v1 on clean synthetic loans (kfp.local)...")
        try:
            trained = self.train_step(self.settings)
        except (RuntimeError, ValueError) as exc:  # a failed step or bad data, named by the message
            raise DemoError("train v1", str(exc)) from exc
        if not trained.promoted:
            raise DemoError(
                "train v1",
                f"the gate kept the old champion: {trained.reason}",
            )
        v1 = self.result.champion_before = trained.model_version
        self.timeline.add("v1 champion", f"v{v1}, {trained.reason}")
        # Every worker, not just the one that answers GET /model: a worker still loading v1 holds the
        # requests it takes, and if MLflow is away meanwhile (tests/chaos kills it) they time out.
        workers = self.settings.serving_workers
        self.wait("serving loads v1", lambda: (workers_serving(self.settings) or {}).get(v1, 0) >= workers, 120,
                  hint=f"see {self.settings.logs_dir / 'serving.log'}")  # fmt: skip
        self.timeline.add("serving v1", f"v{v1}")

    def start_traffic(self) -> None:
        def send(task: Background) -> TrafficSummary:
            return run_traffic(
                self.settings, rps=self.rps, duration=MAX_DURATION_S, rows_per_request=self.rows_per_request,
                label_delay=2.0, seed=int(time.time()) % 10_000, control=self.control, on_progress=task.progress,
            )  # fmt: skip

        # Progress is reported about once a second; 30 s without it is a stuck client, not a slow one.
        self.traffic = Background("the demo's traffic", send, stall_seconds=30).start()
        self.clean_start = self.timeline.add(
            "clean traffic", f"{self.rps:g} req/s x {self.rows_per_request} rows, labels 2 s later"
        )

    def stop_traffic(self) -> None:
        if self.traffic is None:
            return
        self.control.stop.set()
        summary = self.traffic.join(30)
        if isinstance(summary, TrafficSummary):
            self.result.traffic = as_dict(summary)
            self.result.requests = summary.requests
            self.result.failed_requests = summary.failed_requests

    def clean_traffic(self) -> None:
        self.on_status(
            f"clean traffic: waiting for {self.clean_evaluations} monitor verdicts on full windows..."
        )
        verdicts: list[dict] = []
        v1 = self.result.champion_before

        def clean_verdicts() -> bool:
            after = verdicts[-1]["evaluated_at"] if verdicts else self.clean_start
            if verdict := verdict_on(self.settings, v1, after):
                verdicts.append(verdict)
                if verdict["drift_share"] > 0 or alert_firing(self.settings, ALERT):
                    raise DemoError(
                        "clean traffic", f"a false alarm on clean traffic: {verdict['drifted_features']}"
                    )
            return len(verdicts) >= self.clean_evaluations

        self.wait("clean traffic", clean_verdicts, self.fill + self.timeout / 4)
        self.timeline.add("clean: no drift", f"{len(verdicts)} verdicts, drift share 0, no alert")

    def start_incident(self, scenario: str, alert: str) -> float:
        """Switch the traffic to ``scenario`` and wait for ``alert`` to fire; returns seconds to detect."""
        self.control.switch(scenario, self.severity)
        self.incident_at = self.timeline.add("incident", f"{scenario} (severity {self.severity:g})")
        self.on_status(f"incident {scenario}: waiting for {alert} to fire in Prometheus...")
        detected = self.wait(
            "alert fires",
            lambda: alert_firing(self.settings, alert) and time.time(),
            self.timeout,
            interval=0.5,
        )
        self.detected_at = self.timeline.add(f"{alert} firing", at=detected)
        return round(detected - self.incident_at, 1)

    def incident(self) -> None:
        self.result.time_to_detect_s = self.start_incident(self.scenario, ALERT)

    def upstream_bug(self) -> None:
        self.result.quality_alert_s = self.result.time_to_detect_s = self.start_incident(
            UPSTREAM_BUG, QUALITY_ALERT
        )

    def no_retraining(self, step: str) -> None:
        """The upstream-bug story fails at once if anything retrains on the broken data."""
        if run := retraining_since(self.settings, self.incident_at):
            self.result.retrained = True
            raise DemoError(step, f"{run['id']} ({run['alertname']}) started retraining on broken data")

    def retraining_held(self) -> None:
        settings = self.settings
        self.on_status("waiting for the human notification and for the retraining to be held...")

        def paged() -> dict | None:
            self.no_retraining("human notified")
            return paged_since(settings, QUALITY_ALERT, self.incident_at)

        note = self.wait("human notified", paged, 120, interval=0.5,
                         hint=f"see {settings.logs_dir / 'alertmanager.log'} and {settings.logs_dir / 'retrainer.log'}")  # fmt: skip
        self.timeline.add(
            "human notified", f"{note['receiver']}: {note['alert']['summary']}", at=note["received_at"]
        )

        def held() -> str | None:
            self.no_retraining("retraining held: data quality")
            return retraining_held(settings, self.incident_at)

        how = self.wait("retraining held: data quality", held, self.fill + self.timeout / 4, interval=0.5)
        self.timeline.add("retraining held: data quality", how)

    def upstream_fixed(self) -> None:
        settings, v1 = self.settings, self.result.champion_before
        self.control.switch("none")
        self.timeline.add("incident ends", "the client sends income in USD again")
        self.on_status(f"upstream fixed: waiting for {QUALITY_ALERT} (and any drift) to resolve...")

        def resolved() -> float | bool:
            self.no_retraining(f"{QUALITY_ALERT} resolves")
            return (
                not alert_firing(settings, QUALITY_ALERT)
                and not alert_firing(settings, ALERT)
                and time.time()
            )

        at = self.wait(f"{QUALITY_ALERT} resolves", resolved, self.fill + self.timeout / 2)
        self.timeline.add(f"{QUALITY_ALERT} resolved", at=at)
        self.result.time_to_recover_s = round(at - self.incident_at, 1)
        self.no_retraining("champion unchanged")
        self.result.retrained = False
        after = (champion(settings) or {}).get("version")
        self.result.champion_after = after
        if after != v1 or served_version(settings) != v1:
            raise DemoError(
                "champion unchanged",
                f"the champion is v{after}, serving v{served_version(settings)}, not v{v1}",
            )
        self.timeline.add("champion unchanged", f"v{v1}, nothing retrained")

    def retraining(self) -> None:
        settings = self.settings
        self.on_status("waiting for the retrainer to take the alert...")
        run = self.wait(
            "retrainer starts", lambda: retraining_since(settings, self.incident_at), 120, interval=0.5,
            hint=f"see {settings.logs_dir / 'retrainer.log'} and {settings.logs_dir / 'alertmanager.log'}",
        )  # fmt: skip
        self.timeline.add("retraining started", run["id"], at=run["started_at"])
        self.retrain_run = run["id"]
        self.on_status("retraining on production data (kfp.local): waiting for the offline gate...")
        finished = self.wait(
            "retraining finishes",
            lambda: retraining_record(settings, run["id"]),
            settings.retrain_timeout_seconds,
        )
        if finished["state"] not in ("shadow", "promoted"):
            raise DemoError(
                "v2 passes the offline gate",
                f"the retraining ended {finished['state']}: {finished.get('error') or finished.get('gate_reason')}"
                + ("" if "full log" in (finished.get("error") or "") else f" (log: {finished.get('log')})"),
            )
        self.result.champion_after = finished["model_version"]
        self.result.retrained = True
        offline = path_step(finished, "offline gate") or {"at": finished["finished_at"]}
        self.shadow_at = self.timeline.add(
            "v2 in shadow",
            f"v{finished['model_version']} passed the offline gate ({finished['gate_reason']}); it scores "
            "every request next to v1 and answers nobody",
            at=offline["at"],
        )

    def live_gate(self) -> None:
        settings, v2 = self.settings, self.result.champion_after
        self.on_status(f"v{v2} in shadow: waiting for paired labelled rows and the live gate...")
        finished = self.wait(
            "live gate decides",
            lambda: retraining_done(settings, self.retrain_run),
            settings.release_shadow_deadline_seconds + 60,
            hint=f"`sandbox release status` says what the controller waits for; see {settings.logs_dir / 'retrainer.log'}",
        )
        live = path_step(finished, "live gate")
        reason = live["reason"] if live else finished.get("gate_reason")
        if finished["state"] != "promoted":
            raise DemoError("live gate", f"v{v2} ended {finished['state']}: {reason}")
        self.result.live_gate = reason
        promoted = self.timeline.add(
            "v2 champion", f"v{v2}: live gate: {reason}", at=live["at"] if live else None
        )
        self.result.shadow_s = round(promoted - self.shadow_at, 1)
        self.result.time_to_retrain_s = round(promoted - self.detected_at, 1)

    def train_release(self, name: str, scenario: str, seed: int, what: str) -> TrainResult:
        """Train-and-register on ``scenario`` rows; it must pass the offline gate into shadow (steps
        ``<name> trained`` and ``<name> in shadow``)."""
        from sandbox.training import train, train_params

        self.on_status(f"train-and-register on {what} ({scenario}): the offline gate decides...")
        try:
            params = train_params(self.settings, scenario=scenario, seed=seed, trigger="demo")
            trained = train(params, self.settings)
        except (RuntimeError, ValueError) as exc:
            raise DemoError(f"{name} trained", str(exc)) from exc
        if trained.outcome != "shadow":
            raise DemoError(f"{name} in shadow", f"the offline gate said {trained.outcome}: {trained.reason}")
        return trained

    def release_outcome(
        self, version: str, ends: tuple[str, ...], expected: str, step: str, timeout: float
    ) -> dict:
        """The release controller's outcome for ``version`` once it is one of ``ends`` (rejected, promoted,
        rolled_back, done, ended: services/retrainer/release.py); a DemoError at ``step`` unless it is
        ``expected``."""
        settings = self.settings

        def decided() -> dict | None:
            outcomes = (release_status(settings) or {}).get("outcomes") or []
            return next(
                (o for o in reversed(outcomes) if o["version"] == version and o["outcome"] in ends), None
            )

        outcome = self.wait(
            step, decided, timeout, hint="`sandbox release status` says what the controller waits for"
        )
        if outcome["outcome"] != expected:
            raise DemoError(step, f"v{version} ended {outcome['outcome']}: {outcome['reason']}")
        return outcome

    def bad_release(self) -> None:
        """A version trained on broken labels: it passes the offline gate (whose holdout has the same bug)."""
        self.incident_at = time.time()
        trained = self.train_release("bad release", BAD_RELEASE, BAD_RELEASE_SEED, "rows with a label bug")
        self.bad_version = trained.model_version
        self.shadow_at = self.timeline.add(
            "bad v in shadow", f"v{trained.model_version} passed the offline gate: {trained.reason}"
        )

    def bad_release_rejected(self) -> None:
        """The live gate sees it on real labels; the champion never changed and the bad version answered nobody."""
        settings, bad, v1 = self.settings, self.bad_version, self.result.champion_before
        self.on_status(f"v{bad} in shadow: waiting for the live gate on paired labelled rows...")
        decision = self.release_outcome(
            bad, GATE_ENDS, "rejected", "live gate rejects", settings.release_shadow_deadline_seconds + 60
        )
        self.result.live_gate = decision["reason"]
        at = self.timeline.add("live gate rejects", f"v{bad}: {decision['reason']}")
        self.result.shadow_s = round(at - self.shadow_at, 1)
        self.result.time_to_recover_s = round(at - self.incident_at, 1)
        after = (champion(settings) or {}).get("version")
        self.result.champion_after = after
        answered = records_count(settings, model_version=bad)  # a version in shadow answers none
        if after != v1 or answered:
            raise DemoError("champion unchanged", f"champion v{after}; v{bad} answered clients")
        self.timeline.add("champion unchanged", f"v{v1}; v{bad} answered no client")

    def late_regression(self) -> None:
        """A version that passes both gates: trained for a market launch whose labels a broken join
        inverted, judged live before the launch sends any traffic. Promoted, it serves; then the launch."""
        settings = self.settings
        trained = self.train_release(
            "late regression",
            LATE_REGRESSION,
            LATE_REGRESSION_SEED,
            "rows of a market launch with a label bug",
        )
        late = self.late_version = trained.model_version
        shadow_at = self.timeline.add(
            "late v in shadow",
            f"v{late} trained with the overseas launch's rows (their labels inverted) passed the offline gate: "
            f"{trained.reason}",
        )
        self.on_status(f"v{late} in shadow: no overseas traffic yet, the live gate judges today's regions...")
        decision = self.release_outcome(
            late, GATE_ENDS, "promoted", "live gate promotes", settings.release_shadow_deadline_seconds + 60
        )
        in_shadow = time.time() - shadow_at  # shadow_s stays the first act's (the rejection's)
        self.promoted_at = self.timeline.add(
            "live gate promotes", f"v{late} after {in_shadow:.0f}s in shadow: {decision['reason']}"
        )
        # The launch starts once the new champion serves, so its rows reach the new version only.
        self.wait("serving swaps to the late version", lambda: served_version(settings) == late, 120)
        self.timeline.add(f"serving v{late}", "the bake watches it against the previous champion")
        self.control.switch(LAUNCH, 1.0)
        self.timeline.add(
            "overseas launches", "30 % of applications from region=overseas, with their true labels"
        )

    def rolled_back(self) -> None:
        """The bake sees the new region's live quality collapse and moves the champion back by itself."""
        settings, late, v1 = self.settings, self.late_version, self.result.champion_before
        self.on_status(f"v{late} bakes: live quality per region watched against v{v1}...")
        try:
            outcome = self.release_outcome(
                late, BAKE_ENDS, "rolled_back", "bake rolls back", settings.release_bake_seconds + 120
            )
        finally:
            self.control.switch("none")  # the launch pauses until its label join is fixed
        at = self.timeline.add("rolled back", f"v{late}: {outcome['reason']}", at=outcome["at"])
        self.result.rollback = outcome["reason"]
        self.result.bake_s = round(at - self.promoted_at, 1)
        self.wait("serving swaps back", lambda: served_version(settings) == v1, 120)
        self.timeline.add(f"serving v{v1}", "the previous champion again; the launch paused")
        after = (champion(settings) or {}).get("version")
        self.result.champion_after = after
        if after != v1:
            raise DemoError("champion rolled back", f"the champion is v{after}, not v{v1}")
        note = self.wait(
            f"{ROLLBACK_ALERT} pages a human",
            lambda: paged_since(settings, ROLLBACK_ALERT, outcome["at"]),
            120,
        )
        self.timeline.add(
            f"{ROLLBACK_ALERT} paged",
            f"{note['receiver']}: {note['alert']['summary']}",
            at=note["received_at"],
        )

    def recovery(self) -> None:
        settings, v2 = self.settings, self.result.champion_after
        self.wait("serving swaps to v2", lambda: served_version(settings) == v2, 120)
        swapped = self.timeline.add("serving v2", f"v{v2}, zero-downtime swap")
        self.on_status("waiting for the monitor to judge v2's traffic and the alert to resolve...")
        verdict = self.wait(
            "drift falls on v2", lambda: verdict_on(settings, v2, swapped), self.fill + self.timeout / 2
        )
        if verdict["drift_share"] > 0:
            raise DemoError("drift falls on v2", f"v2's traffic still drifts: {verdict['drifted_features']}")
        self.timeline.add("v2: no drift", f"{verdict['rows']} rows judged", at=verdict["evaluated_at"])
        resolved = self.wait(
            "alert resolves", lambda: not alert_firing(settings, ALERT) and time.time(), self.timeout / 2
        )
        self.timeline.add(f"{ALERT} resolved", at=resolved)
        self.result.time_to_recover_s = round(resolved - self.incident_at, 1)

    def bake(self) -> None:
        settings, v2 = self.settings, self.result.champion_after

        def ended() -> dict | None:
            record = retraining_record(settings, self.retrain_run)
            return (
                record if record and (path_step(record, "done") or path_step(record, "rolled back")) else None
            )

        self.on_status(
            f"v{v2} bakes: error rate, p99 and live quality watched against v{self.result.champion_before}..."
        )
        record = self.wait("bake ends", ended, settings.release_bake_seconds + 120)
        if rolled := path_step(record, "rolled back"):
            raise DemoError("bake", f"v{v2} was rolled back: {rolled['reason']}")
        done, started = path_step(record, "done"), path_step(record, "bake")
        self.timeline.add("v2 baked", f"kept: {done['reason']}", at=done["at"])
        if started:
            self.result.bake_s = round(done["at"] - started["at"], 1)


def run_demo(settings: Settings, timeline: Timeline, **options) -> DemoResult:
    """Run the story (options: see :class:`Demo`)."""
    return Demo(settings, timeline, **options).run()


def train_v1(settings: Settings) -> TrainResult:
    from sandbox.training import train, train_params

    return train(train_params(settings, trigger="demo"), settings)


# --- the report -----------------------------------------------------------------------------------


def write_report(settings: Settings, timeline: Timeline, result: DemoResult, alert: str = ALERT) -> Path:
    """The story as an HTML page (sandbox/report.py), once Prometheus holds the last evaluation."""
    from dataclasses import asdict

    from sandbox.report import prometheus_query_range
    from sandbox.report import write_report as write

    return write(
        settings.home / "reports",
        timeline.events,
        asdict(result),
        prometheus_query_range(settings.prometheus_url),
        started=timeline.started,
        alert=alert,
        # One more evaluation and its scrape (5 s), with slack for a busy machine.
        final_scrape_timeout=settings.monitor_interval_seconds + 20,
    )
