"""The retrainer (``uvicorn services.retrainer.app:create_app --factory --port 8002``).

Alertmanager posts its webhook (payload version 4) to ``POST /alerts``. A firing alert with
``action="retrain"`` starts ``train-and-register`` on production data (``source=production``:
the monitor's labelled records mixed with clean rows, see pipelines/production.py), unless
the policy in ``policy.py`` says skip (resolved, in progress, duplicate, cooldown). The run is
tagged in MLflow with the alert that caused it (``trigger``, ``trigger.alertname``, ...); the
gate in the pipeline decides whether the new version becomes champion.

Embedded, the pipeline runs through kfp.local in a child process; with ``SANDBOX_KFP_HOST``
set (the cluster), it is submitted to the Kubeflow Pipelines API.

- ``POST /alerts`` -> 202 ``{"action": "trigger"|"skip", "reason", ...}``; a payload that is not
  Alertmanager's (unparseable JSON included) is 422 with the reason, a body over 4 MiB 413, one
  that is not JSON 415 (services/common.py). A skip is still 2xx: Alertmanager must not retry it.
- Before a retraining starts, the monitor's data-quality verdict is read (``GET /api/status``,
  ``quality.ok``): a failed verdict holds it (``skipped: data_quality``, in ``held``), see policy.py.
- ``POST /notifications``: the human receiver of the embedded stack. Alertmanager routes
  ``action="page"`` alerts (DataQualityDegraded, InputRejectionsHigh) here, never to ``/alerts``;
  each notification is recorded (persisted like the history) and logged; bad input is 422 with the
  reason and nothing is recorded. (In the cluster Slack or e-mail sit next to it in alertmanager.yml.)
- ``GET /api/status``: running or idle, the last retrainings and their gate decisions, the held
  retrainings, the human notifications.
- ``GET /api/release``: the release controller (release.py): phase, champion, challenger, since,
  the live numbers so far, what it waits for, the last decisions. ``POST /api/rollback``
  (``{"to": VERSION | null}``): champion back to ``previous`` (or ``to``) once that version loads
  and passes serving's smoke test; 422 naming why not.
- ``GET /metrics`` (text/plain), ``GET /healthz``.

A retraining ends with its offline gate: ``promoted`` (the first model), ``rejected``, or ``shadow``
(a challenger); the controller then writes the rest of its path into the same history record
(shadow -> live gate -> bake -> done / rolled back) and its ``state``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from contextlib import asynccontextmanager
from typing import Literal

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, Field, field_validator

from pipelines.params import TrainParams
from pipelines.runners import Runner, runner_for
from sandbox.settings import Settings
from services.common import add_metrics_route, error_response, error_responses, guard, setup_logging
from services.retrainer.journal import Journal
from services.retrainer.policy import SKIP, TRIGGER, Decision, alert_key, decide, quality_hold
from services.retrainer.release import PHASES, ReleaseController

log = logging.getLogger("sandbox.retrainer")

# Alertmanager sends at most a group's alerts (<= 1,000 here, ~1 KiB each) in one notification.
MAX_BODY_BYTES = 4 * 1024 * 1024
# The monitor answers its status from memory; a monitor slower than this is treated as not answering.
MONITOR_TIMEOUT_SECONDS = 3.0
SHOWN = 20  # notifications and held retrainings in /api/status
VERSION_PATTERN = r"^[1-9][0-9]{0,9}$"  # a registry version number (MLflow's column is an integer)

# --- Alertmanager's webhook payload (version 4) ----------------------------------------------------


class Alert(BaseModel):
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(min_length=1)
    annotations: dict[str, str] = {}
    startsAt: str  # noqa: N815 (Alertmanager's field names)
    endsAt: str = ""  # noqa: N815
    generatorURL: str = ""  # noqa: N815
    fingerprint: str = ""

    @field_validator("labels")
    @classmethod
    def named(cls, labels: dict[str, str]) -> dict[str, str]:
        if not labels.get("alertname"):
            raise ValueError("an alert needs an alertname label")
        return labels


class Notification(BaseModel):
    version: Literal["4"] = "4"
    groupKey: str = ""  # noqa: N815
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = {}  # noqa: N815
    commonLabels: dict[str, str] = {}  # noqa: N815
    alerts: list[Alert] = Field(min_length=1, max_length=1000)


class Answer(BaseModel):
    """What ``POST /alerts`` did: ``action`` trigger (then ``run``) or skip, and why."""

    action: Literal["trigger", "skip"]
    reason: str
    alertname: str | None
    run: str | None = None


class Recorded(BaseModel):
    """What ``POST /notifications`` kept: its id and how many alerts it carried."""

    id: str
    alerts: int


class Health(BaseModel):
    status: str
    running: bool


# --- metrics ---------------------------------------------------------------------------------------


class RetrainerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.notifications = Counter(
            "sandbox_retrain_notifications", "Alertmanager notifications received", ["status"], registry=r
        )
        self.triggers = Counter("sandbox_retrain_triggers", "Retrainings started by an alert", registry=r)
        self.skips = Counter(
            "sandbox_retrain_skips", "Notifications that started nothing, by reason", ["reason"], registry=r
        )
        self.failures = Counter("sandbox_retrain_failures", "Retrainings that failed to run", registry=r)
        self.runs = Counter(
            "sandbox_retrain_runs", "Finished retrainings by outcome (promoted/rejected/failed)", ["outcome"], registry=r
        )  # fmt: skip
        self.in_progress = Gauge("sandbox_retrain_in_progress", "1 while a retraining runs", registry=r)
        self.last_success = Gauge(
            "sandbox_retrain_last_success_timestamp_seconds",
            "Unix time the last retraining finished (promoted or rejected)",
            registry=r,
        )
        self.duration = Gauge(
            "sandbox_retrain_last_duration_seconds", "Wall time of the last retraining", registry=r
        )
        self.pages = Counter(
            "sandbox_human_notifications",
            "Alertmanager notifications to the human receiver (action=page), by status",
            ["status"],
            registry=r,
        )
        for status in ("firing", "resolved"):
            self.pages.labels(status)
        for reason in (
            "resolved",
            "in_progress",
            "release_in_progress",
            "duplicate",
            "cooldown",
            "data_quality",
        ):
            self.skips.labels(reason)
        for outcome in ("promoted", "shadow", "rejected", "failed"):
            self.runs.labels(outcome)
        self.release_phase = Gauge(
            "sandbox_release_phase", "1 for the release controller's phase (idle/shadow/bake)", ["phase"], registry=r
        )  # fmt: skip
        self.release_decisions = Counter(
            "sandbox_release_decisions", "Release decisions by outcome", ["outcome"], registry=r
        )
        # ModelRolledBack fires on its increase (monitoring/prometheus/rules/sandbox.yml).
        self.rollbacks = Counter(
            "sandbox_release_rollbacks_total", "Champions moved back to the previous version (bake or by hand)", registry=r
        )  # fmt: skip
        self.release_up = Gauge(
            "sandbox_release_controller_up", "1 while the release controller polls", registry=r
        )
        for phase in PHASES:
            self.release_phase.labels(phase)
        for outcome in ("promoted", "rejected", "done", "rolled_back", "ended"):
            self.release_decisions.labels(outcome)


# --- the retrainer ---------------------------------------------------------------------------------


def unix_seconds(timestamp: str) -> float:
    """Alertmanager's RFC 3339 time (up to nanoseconds) as Unix seconds; 0.0 when unreadable."""
    from datetime import datetime

    micro = re.sub(r"(\.\d{6})\d+", r"\1", timestamp)  # datetime keeps microseconds
    try:
        return datetime.fromisoformat(micro.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def retrain_params(settings: Settings, alert: dict, seed: int) -> TrainParams:
    """train-and-register's parameters for a retraining on production data, tagged with the alert."""
    alertname = alert["labels"].get("alertname", "unknown")
    trigger_info = {
        "alertname": alertname,
        "fingerprint": alert.get("fingerprint", ""),
        "starts_at": alert.get("startsAt", ""),
        "summary": alert.get("annotations", {}).get("summary", "")[:250],
    }
    return TrainParams.from_settings(
        settings,
        source="production",
        n_rows=settings.retrain_production_rows,
        seed=seed,
        # The new drift reference waits for rows served after the alert began (pipelines/production.py).
        drift_reference_since=unix_seconds(alert.get("startsAt", "")),
        trigger=f"alert:{alertname}",
        trigger_info=json.dumps(trigger_info),
    )


def monitor_answer(client: httpx.Client, monitor_url: str) -> dict | None:
    """The monitor's ``GET /api/status``, or None when it does not answer with JSON."""
    try:
        response = client.get(f"{monitor_url.rstrip('/')}/api/status", timeout=MONITOR_TIMEOUT_SECONDS)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


class Retrainer:
    def __init__(
        self,
        settings: Settings,
        runner: Runner,
        metrics: RetrainerMetrics,
        monitor: httpx.Client | None = None,
    ):
        self.settings, self.runner, self.metrics = settings, runner, metrics
        self.monitor = monitor or httpx.Client()
        self.lock = threading.Lock()
        self.running: dict | None = None
        self.last_trigger_at: float | None = None
        self.recent_keys: dict[str, float] = {}
        # On disk, so a restart keeps the cooldown and the story.
        home = settings.home / "retrainer"
        self.history = Journal(home / "history.jsonl")
        self.held = Journal(home / "held.jsonl")  # retrainings held by the data-quality guard
        self.notifications = Journal(home / "notifications.jsonl")  # the human receiver's pages
        self._threads: list[threading.Thread] = []
        self.interrupted: dict | None = None
        self.release: ReleaseController | None = None  # set by create_app (the controller's events land here)
        self._kill_orphans()
        self._restore()
        self._resume()

    def _restore(self) -> None:
        """The last retrainings from the journal, so a restart keeps the cooldown and the story.

        A run is written when it starts and again when it ends; a run whose last record is its
        start was interrupted by a restart of this process: it is recorded as failed, and does
        not hold the cooldown, so it can be retried (:meth:`_resume`).
        """
        records: dict[str, dict] = {}  # id -> its last record (start, then finish)
        for record in self.history.items:
            records[record.get("id", "")] = record
        self.history.items.clear()
        for record in records.values():
            if record.get("state") == "running":
                record = {**record, "state": "failed", "finished_at": time.time(),
                          "error": "interrupted: the retrainer restarted while it ran"}  # fmt: skip
                record["seconds"] = round(record["finished_at"] - record["started_at"], 1)
                self.metrics.runs.labels("failed").inc()
                self.interrupted = record
                self.history.append({k: v for k, v in record.items() if k != "alert"})
                continue
            self.last_trigger_at = max(self.last_trigger_at or 0.0, record.get("started_at", 0.0))
            if record.get("alert_key"):
                self.recent_keys[record["alert_key"]] = record["started_at"]
            self.history.items.append({k: v for k, v in record.items() if k != "alert"})

    def _resume(self) -> None:
        """Retry a run the last restart interrupted (its alert is in its start record), if it is recent."""
        run = self.interrupted
        if (
            run
            and run.get("alert")
            and time.time() - run["started_at"] < self.settings.retrain_timeout_seconds
        ):
            with self.lock:
                started = self._start(run["alert"], time.time(), resumes=run["id"])
            log.warning("%s was interrupted by a restart: retrying it as %s", run["id"], started["id"])

    @staticmethod
    def _kill_orphans() -> None:
        """Training children left by a previous incarnation of this retrainer (same stack) are stopped.

        run_in_child gives each its own session, so SIGKILL of the retrainer leaves it running: it
        would compete for the CPU with the retry and could still promote a version no one records.
        """
        import os
        import signal

        import psutil

        marker = os.environ.get("SANDBOX_STACK_HOME")
        if not marker:
            return
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if (
                    "pipelines.run" in (proc.info["cmdline"] or [])
                    and proc.environ().get("SANDBOX_STACK_HOME") == marker
                ):
                    log.warning("stopping pid %d, a training left by a previous retrainer", proc.pid)
                    os.killpg(proc.pid, signal.SIGKILL)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue

    def handle(self, notification: dict) -> dict:
        """Apply the policy; start a retraining in the background when it says so."""
        now = time.time()
        self.metrics.notifications.labels(notification["status"]).inc()
        with self.lock:
            decision = decide(
                notification,
                running=self.running is not None,
                last_trigger_at=self.last_trigger_at,
                recent_keys=self.recent_keys,
                now=now,
                cooldown_seconds=self.settings.retrain_cooldown_seconds,
                releasing=self.release is not None and self.release.status()["phase"] != "idle",
            )
            alertname = (decision.alert or {}).get("labels", {}).get("alertname")
            if decision.action == TRIGGER:
                decision = self._quality_guard(decision, alertname, now)
            if decision.action != TRIGGER:
                self.metrics.skips.labels(decision.reason).inc()
                log.info(
                    "skipped a %s notification (%s): %s", notification["status"], alertname, decision.reason
                )
                return {"action": decision.action, "reason": decision.reason, "alertname": alertname}
            run = self._start(decision.alert, now)
        return {"action": TRIGGER, "reason": decision.reason, "alertname": alertname, "run": run["id"]}

    def _start(self, alert: dict, now: float, resumes: str | None = None) -> dict:
        """Start a retraining for ``alert`` (the caller holds the lock); its start is written to disk."""
        key = alert_key(alert)
        alertname = alert.get("labels", {}).get("alertname")
        self.last_trigger_at, self.recent_keys[key] = now, now
        run = {
            "id": f"retrain-{int(now * 1000)}",
            "alertname": alertname,
            "alert_key": key,
            "alert_starts_at": alert.get("startsAt"),
            "started_at": now,
            "state": "running",
        }
        if resumes:
            run["resumes"] = resumes
        self.running = run
        self.history.append({**run, "alert": alert}, show=False)  # so a restart knows what it interrupted
        self.metrics.triggers.inc()
        self.metrics.in_progress.set(1)
        log.info(
            "%s fired (%s): starting train-and-register on production data as %s", alertname, key, run["id"]
        )
        thread = threading.Thread(target=self._retrain, args=(run, alert), name=run["id"], daemon=True)
        self._threads.append(thread)
        thread.start()
        return run

    def _quality_guard(self, decision: Decision, alertname: str | None, now: float) -> Decision:
        """The second guard: hold the retraining when the monitor says the live data failed its checks."""
        answer = monitor_answer(self.monitor, self.settings.monitor_url)
        hold = quality_hold(answer)
        if hold is None:
            return decision
        quality = answer["quality"]
        self.held.append({
            "at": now, "alertname": alertname, "alert_key": alert_key(decision.alert), "skipped": "data_quality",
            "reason": hold, "quality_evaluated_at": quality.get("evaluated_at"),
            "failed": (quality.get("failed") or [])[:10],
        })  # fmt: skip
        log.warning("%s: retraining held, %s", alertname, hold)
        return Decision(SKIP, "data_quality", decision.alert)

    def page(self, notification: dict) -> dict:
        """The human receiver: record (and log) one Alertmanager notification."""
        now = time.time()
        record = {
            "id": f"page-{int(now * 1000)}",
            "received_at": now,
            "status": notification["status"],
            "receiver": notification.get("receiver", ""),
            "alerts": [
                {
                    "alertname": a["labels"]["alertname"], "status": a["status"],
                    "severity": a["labels"].get("severity", ""), "summary": a["annotations"].get("summary", "")[:300],
                    "runbook": a["annotations"].get("runbook", ""), "starts_at": a.get("startsAt", ""),
                    "ends_at": a.get("endsAt", ""), "fingerprint": a.get("fingerprint", ""),
                }
                for a in notification["alerts"]
            ],
        }  # fmt: skip
        self.notifications.append(record)
        self.metrics.pages.labels(notification["status"]).inc()
        for alert in record["alerts"]:
            log.warning(
                "PAGE %s %s: %s (%s)", alert["status"], alert["alertname"], alert["summary"], alert["runbook"]
            )
        return {"id": record["id"], "alerts": len(record["alerts"])}

    def _retrain(self, run: dict, alert: dict) -> None:
        log_path = self.settings.logs_dir / f"{run['id']}.log"
        params = retrain_params(self.settings, alert, seed=int(run["started_at"]) % 100_000)
        try:
            result = self.runner.run(params, log_name=run["id"])
        except Exception as exc:  # a failed run is counted and shown, never fatal to the service
            outcome = "failed"
            run.update(error=str(exc)[:500])
            self.metrics.failures.inc()
            log.error("%s failed: %s", run["id"], exc)
        else:
            outcome = result.outcome  # promoted (the first model) | shadow (a challenger) | rejected
            run.update(
                model_version=result.model_version,
                run_id=result.run_id,
                champion_version=result.champion_version,
                gate_reason=result.reason,
                metrics=result.metrics,
                path=[
                    {"step": "offline gate", "outcome": outcome, "reason": result.reason, "at": time.time()}
                ],
            )
            self.metrics.last_success.set(time.time())
            log.info("%s finished: v%s %s (%s)", run["id"], run["model_version"], outcome, run["gate_reason"])
        run.update(state=outcome, finished_at=time.time(), log=str(log_path))
        run["seconds"] = round(run["finished_at"] - run["started_at"], 1)
        self.metrics.runs.labels(outcome).inc()
        self.metrics.duration.set(run["seconds"])
        self.metrics.in_progress.set(0)
        with self.lock:
            self.history.append(run)
            self.running = None

    def release_event(self, event: dict) -> None:
        """The release controller moved a version on: add the step to its retraining's path and state."""
        state = {
            "shadow": "shadow",
            "promoted": "promoted",
            "rejected": "rejected",
            "rolled_back": "rolled_back",
        }
        step = {k: event[k] for k in ("step", "outcome", "reason", "at")}
        if event["outcome"] in ("promoted", "rejected", "done", "rolled_back", "ended"):
            self.metrics.release_decisions.labels(event["outcome"]).inc()
        if event["outcome"] == "rolled_back":
            self.metrics.rollbacks.inc()
        with self.lock:
            for record in self.history.items:  # newest last; a version is trained by one retraining
                if record.get("model_version") == event["version"] and record.get("path") is not None:
                    record["path"].append(step)
                    if event["outcome"] in state:
                        record["state"] = state[event["outcome"]]
                    elif event["outcome"] == "ended" and record["state"] == "shadow":
                        record["state"] = "rejected"  # superseded or withdrawn: it never served
                    self.history.append(dict(record), show=False)  # on disk; a restart reads the last one
                    return

    def status(self) -> dict:
        with self.lock:
            running = dict(self.running) if self.running else None
        history = self.history.newest_first()
        return {
            "running": running,
            "last": history[0] if history else None,
            "history": history,
            "cooldown_seconds": self.settings.retrain_cooldown_seconds,
            "last_trigger_at": self.last_trigger_at,
            "mode": "kfp" if self.settings.kfp_host else "kfp.local",
            "held": self.held.newest_first(SHOWN),
            "notifications": self.notifications.newest_first(SHOWN),
            "release": self.release.status() if self.release else None,
        }

    def wait_idle(self, timeout: float) -> None:
        for thread in list(self._threads):
            thread.join(timeout)


# --- HTTP ------------------------------------------------------------------------------------------


class RollbackRequest(BaseModel):
    to: str | None = Field(
        None,
        description="the version to serve (a registry version number); default: the `previous` alias",
        json_schema_extra={"pattern": VERSION_PATTERN},
    )

    @field_validator("to")
    @classmethod
    def a_version_number(cls, to: str | None) -> str | None:
        # MLflow answers 500 to a version past its integer column (a 30-digit one, found by
        # schemathesis): refused here, before MLflow is asked.
        if to is not None and not re.fullmatch(VERSION_PATTERN, to):
            raise ValueError(
                f"{to[:40]!r} is not a version number: pass one like 3 (`sandbox release status`)"
            )
        return to


class RollbackAnswer(BaseModel):
    champion: str
    was: str | None
    reason: str


def load_check(settings: Settings):
    """Serving's own load + smoke test of a version (services/serving/model_store.py), as a ValueError."""

    def check(version: str) -> None:
        from mlflow.tracking import MlflowClient

        from pipelines.features import LOAN_SCHEMA
        from services.serving.model_store import ModelLoadError, load_version

        client = MlflowClient(settings.mlflow_uri, registry_uri=settings.mlflow_uri)
        try:
            load_version(client, settings.mlflow_uri, settings.model_name, version, "champion", LOAN_SCHEMA)
        except ModelLoadError as exc:
            raise ValueError(f"v{version} does not load or fails the smoke test: {exc}") from exc

    return check


def release_controller_for(settings: Settings, retrainer: Retrainer, metrics: RetrainerMetrics):
    """The release controller, not started: the app's lifespan starts and stops its thread."""
    from mlflow.tracking import MlflowClient

    def on_state(state) -> None:
        for phase in PHASES:
            metrics.release_phase.labels(phase).set(1 if state.phase == phase else 0)

    controller = ReleaseController(
        settings, MlflowClient(settings.mlflow_uri), httpx.Client(), retrainer.release_event, on_state
    )
    metrics.release_up.set_function(lambda: 1 if controller.died is None else 0)
    return controller


def create_app(
    settings: Settings | None = None,
    runner: Runner | None = None,
    monitor: httpx.Client | None = None,
    release_controller: bool = True,
) -> FastAPI:
    """``monitor``: the HTTP client the data-quality guard asks the monitor with (tests pass a fake);
    ``release_controller=False`` leaves the release controller out (tests of the webhook alone)."""
    settings = settings or Settings()
    setup_logging()
    # A down MLflow must not hold the release controller (or a rollback) for minutes of retries (its
    # default is 7 with backoff), as in the monitor. The training child inherits it: a step that
    # cannot reach MLflow fails in ~20 s, recorded as a failed retraining, instead of hanging.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if runner is None:
        runner = runner_for(settings, settings.retrain_timeout_seconds)
    metrics = RetrainerMetrics()
    retrainer = Retrainer(settings, runner, metrics, monitor)
    if release_controller:
        retrainer.release = release_controller_for(settings, retrainer, metrics)
    log.info(
        "retrainer: %s, model %s, monitor %s, cooldown %.0fs",
        f"KFP API {settings.kfp_host}" if settings.kfp_host else "kfp.local",
        settings.model_name, settings.monitor_url, settings.retrain_cooldown_seconds,
    )  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Polling starts with the server, not when the app is built: an app made only to read its
        # OpenAPI document must not poll an MLflow that is not there.
        if retrainer.release is not None:
            retrainer.release.start()
        try:
            yield
        finally:
            if retrainer.release is not None:
                retrainer.release.stop()

    app = FastAPI(
        title="mlops-sandbox retrainer",
        description="Alertmanager webhook in, train-and-register on production data out.",
        lifespan=lifespan,
    )
    app.state.retrainer = retrainer
    guard(
        app,
        max_body_bytes=MAX_BODY_BYTES,
        too_large_hint="is this an Alertmanager notification?",
        invalid="not an Alertmanager webhook payload (version 4)",
    )
    add_metrics_route(app, metrics.registry)

    @app.post(
        "/alerts",
        status_code=202,
        responses=error_responses(400, 413, 415, 422),
        response_model_exclude_unset=True,  # a skip has no run id: leave the key out, as before
    )
    def alerts(notification: Notification) -> Answer:
        """Alertmanager's webhook: a firing ``action=retrain`` alert starts a retraining (policy.py)."""
        return Answer(**retrainer.handle(notification.model_dump()))

    @app.post("/notifications", status_code=202, responses=error_responses(400, 413, 415, 422))
    def notifications(notification: Notification) -> Recorded:
        """The human receiver: Alertmanager's webhook for ``action=page`` alerts, recorded and listed, never acted on."""
        return Recorded(**retrainer.page(notification.model_dump()))

    @app.get("/api/status")
    def status() -> dict:
        """Running or idle, the last retrainings and their gate decisions, held retrainings, human notifications."""
        return retrainer.status()

    @app.get(
        "/api/release",
        responses=error_responses(described={404: "The release controller is not running in this retrainer"}),
    )
    def release() -> dict:
        """The release controller: phase, champion, challenger, since, live numbers so far, what it waits for."""
        if retrainer.release is None:
            return error_response(404, "the release controller is not running in this retrainer")
        return retrainer.release.status()

    @app.post(
        "/api/rollback",
        responses=error_responses(
            400,
            413,
            415,
            422,
            described={
                404: "The release controller is not running in this retrainer",
                409: "Refused: the target does not exist, is the champion already, or does not load",
                503: "MLflow did not answer",
            },
        ),  # fmt: skip
    )
    def rollback(request: RollbackRequest) -> RollbackAnswer:
        """Champion back to ``previous`` (or ``to``), once that version loads and passes serving's smoke test."""
        if retrainer.release is None:
            return error_response(404, "the release controller is not running in this retrainer")
        try:
            return RollbackAnswer(**retrainer.release.rollback(request.to, load_check(settings)))
        except ValueError as exc:  # a valid request the registry's state refuses (422 is a malformed body)
            return error_response(409, str(exc))
        except Exception as exc:  # MLflow down: say so, change nothing more
            return error_response(503, f"MLflow at {settings.mlflow_uri} did not answer: {str(exc)[:300]}")

    @app.get("/healthz")
    def healthz() -> Health:
        return Health(status="ok", running=retrainer.running is not None)

    return app
