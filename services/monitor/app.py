"""The drift monitor service (``uvicorn services.monitor.app:create_app --factory --port 8001``).

- ``POST /ingest``: inference records (the DESIGN contract), at most 5,000 a call; answers
  ``{"inserted", "duplicates"}`` only once they are committed. A known ``request_id`` is
  stored once.
- ``POST /labels``: ``{"labels": [{"request_id", "label": 0|1}]}`` -> ``{"updated", "unknown"}``.
  Unknown ids are listed with 200 when at least one label was stored; when none of the ids
  is known the answer is 422 (nothing was stored, and a client that labels before the
  records arrive should hear it). Labels of unknown ids are not kept.
- Bad input (types, garbage JSON, more than 5,000 items) is 422, a body over the limit 413,
  a POST without Content-Length 411; each with a reason, and nothing is stored.
- Every ``interval_seconds`` a background thread evaluates the latest window (rows of the
  version that served the most recent record) against that version's reference sample
  from MLflow and updates the gauges on ``/metrics``. ``/reports/latest`` is Evidently's
  data drift preset report of the last judged window, rendered when first asked for.
  ``/api/status`` and ``/`` show it all; ``/healthz`` for probes.
- ``GET /api/records?limit=N&labelled=true``: the latest stored records (the retrainer's
  production data).
"""

from __future__ import annotations

import html
import logging
import math
import os
import threading
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated

import httpx
import pandas as pd
from fastapi import FastAPI, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from pipelines.features import LOAN_SCHEMA, FeatureSchema
from sandbox.settings import Settings
from services.monitor.drift import (
    DEFAULT_MIN_LABELLED_ROWS,
    DEFAULT_MIN_ROWS,
    INSUFFICIENT,
    drift_report_html,
    live_quality,
    load_reference,
    rows_of_latest_version,
)
from services.monitor.drift import evaluate_drift as run_drift
from services.monitor.store import RecordStore

log = logging.getLogger("sandbox.monitor")

MAX_ITEMS_PER_CALL = 5_000
MAX_EXPORT_ROWS = 50_000
HISTORY_KEYS = (
    "evaluated_at",
    "verdict",
    "drift_share",
    "rows",
    "model_version",
    "drifted_features",
    "duration_seconds",
)


@dataclass(frozen=True)
class MonitorConfig:
    """The monitor's tunables. A settings field ``monitor_<name>`` overrides ``<name>``."""

    db_path: Path | None = None  # None: <settings.home>/monitor/monitor.db
    interval_seconds: float = 30.0
    window_rows: int = 2_000
    window_seconds: float = 3_600.0
    min_rows: int = DEFAULT_MIN_ROWS  # see drift.py for why 1,000
    drift_thresholds: dict | None = None  # by Evidently test name; None: Evidently's (settings set them)
    min_labelled_rows: int = DEFAULT_MIN_LABELLED_ROWS
    quality_window_rows: int = 5_000
    quality_window_seconds: float = 86_400.0  # labels arrive late: look further back than for drift
    max_body_bytes: int = 5 * 1024 * 1024
    synchronous: str = "NORMAL"  # see store.py: survives a process kill, not a power loss
    history: int = 50

    @classmethod
    def from_settings(cls, settings: Settings) -> MonitorConfig:
        values = {
            f.name: getattr(settings, f"monitor_{f.name}")
            for f in fields(cls)
            if getattr(settings, f"monitor_{f.name}", None) is not None
        }
        return cls(**values)

    def database(self, settings: Settings) -> Path:
        return Path(self.db_path) if self.db_path else settings.home / "monitor" / "monitor.db"


# --- request bodies -------------------------------------------------------------------------------

RequestId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
FeatureName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
FeatureValue = float | Annotated[str, StringConstraints(max_length=256)] | None
Binary = Annotated[StrictInt, Field(ge=0, le=1)]  # StrictInt: true is not 1


class Record(BaseModel):
    # strict: "1" is not a prediction and true is not a number; unknown fields are ignored (forward compatible).
    model_config = ConfigDict(strict=True, extra="ignore")

    request_id: RequestId
    ts: float = Field(gt=0, allow_inf_nan=False, description="Unix seconds of the prediction")
    model_version: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    features: dict[FeatureName, FeatureValue] = Field(min_length=1, max_length=256)
    prediction: Binary
    probability: float = Field(ge=0, le=1)


class IngestBody(BaseModel):
    model_config = ConfigDict(strict=True)
    records: list[Record] = Field(min_length=1, max_length=MAX_ITEMS_PER_CALL)


class Label(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    request_id: RequestId
    label: Binary


class LabelsBody(BaseModel):
    model_config = ConfigDict(strict=True)
    labels: list[Label] = Field(min_length=1, max_length=MAX_ITEMS_PER_CALL)


# --- metrics ---------------------------------------------------------------------------------------


class MonitorMetrics:
    """Gauges in a registry of this app's own (several apps in one process must not collide)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.drift_share = Gauge(
            "sandbox_drift_share", "Share of features flagged as drifted (NaN: too little data)", registry=r
        )
        self.feature_score = Gauge(
            "sandbox_feature_drift_score",
            "Drift score of a feature (method per /api/status)",
            ["feature"],
            registry=r,
        )
        self.feature_drifted = Gauge(
            "sandbox_feature_drifted", "1 if the feature is flagged", ["feature"], registry=r
        )
        self.window_rows = Gauge(
            "sandbox_monitor_window_rows", "Rows in the last evaluated window", registry=r
        )
        self.sufficient = Gauge(
            "sandbox_monitor_verdict_sufficient",
            "1 if the last window had enough rows to judge drift",
            registry=r,
        )
        self.last_evaluation = Gauge(
            "sandbox_monitor_last_evaluation_timestamp_seconds",
            "Unix time of the last completed evaluation",
            registry=r,
        )
        self.duration = Gauge(
            "sandbox_monitor_evaluation_duration_seconds", "Wall time of the last evaluation", registry=r
        )
        self.accuracy = Gauge(
            "sandbox_live_accuracy", "Accuracy on labelled records (NaN: too few)", registry=r
        )
        self.f1 = Gauge("sandbox_live_f1", "F1 on labelled records (NaN: too few)", registry=r)
        self.labelled_rows = Gauge(
            "sandbox_monitor_labelled_rows", "Labelled records behind live quality", registry=r
        )
        self.ingested = Counter("sandbox_monitor_ingested_records", "Inference records stored", registry=r)
        self.duplicates = Counter(
            "sandbox_monitor_duplicate_records",
            "Records ignored because their request_id was stored",
            registry=r,
        )
        self.labels = Counter("sandbox_monitor_labels", "Labels attached to stored records", registry=r)
        self.errors = Counter("sandbox_monitor_evaluation_errors", "Evaluations that failed", registry=r)
        # Unknown until the first evaluation says otherwise: NaN never satisfies an alert threshold.
        for gauge in (self.drift_share, self.accuracy, self.f1):
            gauge.set(math.nan)


# --- the monitor: evaluation loop and state ---------------------------------------------------------


def json_safe(value):
    """NaN and infinities become None: JSON has no NaN, and JSONResponse refuses it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class Monitor:
    def __init__(
        self,
        settings: Settings,
        config: MonitorConfig,
        store: RecordStore,
        metrics: MonitorMetrics,
        schema: FeatureSchema = LOAN_SCHEMA,
        reference_loader=load_reference,
    ):
        self.settings, self.config, self.store, self.metrics = settings, config, store, metrics
        self.schema = schema
        self.reference_loader = reference_loader
        self.report_path = config.database(settings).parent / "reports" / "latest.html"
        self.lock = threading.Lock()
        self.latest: dict | None = None
        self.report_generated_at: float | None = None
        # The last judged window and its reference, kept for the HTML report: rendering it costs
        # ~1-2 s of plots, so it happens when someone opens /reports/latest, not every interval.
        self._report_window: tuple[pd.DataFrame, pd.DataFrame, float] | None = None
        self._report_rendered_for: float | None = None
        self._report_lock = threading.Lock()
        self.history: deque[dict] = deque(maxlen=config.history)
        self.models: dict = {"reachable": None}
        self.alerts: list[dict] | None = None
        self.retraining: dict | None = None
        self.ingested_since_evaluation = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Ingest side, called from request threads.
    def ingest(self, records: list[dict]) -> tuple[int, int]:
        inserted, duplicates = self.store.insert_records(records)
        self.metrics.ingested.inc(inserted)
        self.metrics.duplicates.inc(duplicates)
        with self.lock:
            self.ingested_since_evaluation += inserted
        return inserted, duplicates

    def label(self, labels: list[dict]) -> tuple[int, list[str]]:
        updated, unknown = self.store.set_labels(labels)
        self.metrics.labels.inc(updated)
        return updated, unknown

    # Evaluation side, called from the evaluator thread.
    def evaluate_once(self) -> dict:
        """Evaluate the latest window, export gauges, keep the report; returns the summary."""
        cfg = self.config
        started, now = time.monotonic(), time.time()
        window = self.store.window(cfg.window_rows, cfg.window_seconds, now=now)
        version, rows = rows_of_latest_version(window)
        reference = None
        if version is not None and len(rows) >= cfg.min_rows:
            reference = self.reference_loader(self.settings.mlflow_uri, self.settings.model_name, version)
        result = run_drift(
            rows, reference, self.schema, cfg.min_rows, model_version=version, thresholds=cfg.drift_thresholds
        )
        labelled = self.store.labelled(cfg.quality_window_rows, cfg.quality_window_seconds, now=now)
        if version is not None:
            labelled = labelled[labelled["model_version"].astype(str) == version]
        quality = live_quality(labelled, cfg.min_labelled_rows)
        duration = time.monotonic() - started
        summary = {
            **result.to_dict(),
            "window_rows_all_versions": len(window),
            "quality": quality,
            "labelled_rows": len(labelled),
            "evaluated_at": now,
            "duration_seconds": round(duration, 3),
        }
        self._export(result, quality, len(labelled), duration, now)
        with self.lock:
            ingested, self.ingested_since_evaluation = self.ingested_since_evaluation, 0
            if result.sufficient:
                self._report_window = (rows, reference, now)
            self.latest = summary
            self.history.append({k: summary[k] for k in HISTORY_KEYS})
        log.info(
            "evaluated %d rows of v%s (%d in window, %d ingested since last): %s, drift share %s%s; "
            "live quality %s; %.2fs",
            result.rows, version, len(window), ingested, result.verdict,
            "n/a" if result.drift_share is None else f"{result.drift_share:.2f}",
            f" ({', '.join(result.drifted_features)})" if result.drifted_features else "",
            "n/a" if quality is None else f"accuracy {quality['accuracy']:.3f} f1 {quality['f1']:.3f}",
            duration,
        )  # fmt: skip
        return summary

    def _export(self, result, quality: dict | None, labelled_rows: int, duration: float, now: float) -> None:
        m = self.metrics
        m.window_rows.set(result.rows)
        m.sufficient.set(1 if result.sufficient else 0)
        if result.sufficient:
            m.drift_share.set(result.drift_share)
            for name, feature in result.features.items():
                m.feature_score.labels(name).set(feature.score)
                m.feature_drifted.labels(name).set(1 if feature.drifted else 0)
        else:  # no verdict: no stale flags either
            m.drift_share.set(math.nan)
            m.feature_score.clear()
            m.feature_drifted.clear()
        m.accuracy.set(math.nan if quality is None else quality["accuracy"])
        m.f1.set(math.nan if quality is None else quality["f1"])
        m.labelled_rows.set(labelled_rows)
        m.duration.set(duration)
        m.last_evaluation.set(now)

    def report(self) -> Path | None:
        """The HTML report of the last judged window (rendered now if that window has none yet); None before one."""
        with self._report_lock:  # one rendering at a time; a second reader waits and gets the same file
            with self.lock:
                window = self._report_window
            if window is not None and window[2] != self._report_rendered_for:
                rows, reference, evaluated_at = window
                started = time.monotonic()
                self._save_report(
                    drift_report_html(rows, reference, self.schema, self.config.drift_thresholds)
                )
                self._report_rendered_for = evaluated_at
                log.info(
                    "rendered the drift report of %d rows in %.2fs", len(rows), time.monotonic() - started
                )
        return self.report_path if self.report_path.is_file() else None

    def _save_report(self, text: str) -> None:
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.report_path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.report_path)  # readers see the old report or the new one, never half
        with self.lock:
            self.report_generated_at = time.time()

    def refresh_context(self) -> None:
        """Models and aliases from MLflow, firing alerts from Alertmanager: cached for the status page."""
        models = self._models()
        alerts = self._alerts()
        retraining = self._retraining()
        with self.lock:
            self.models, self.alerts, self.retraining = models, alerts, retraining

    def _models(self) -> dict:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.settings.mlflow_uri)
        out: dict = {"reachable": True, "tracking_uri": self.settings.mlflow_uri}
        try:
            for alias in ("champion", "challenger"):
                try:
                    mv = client.get_model_version_by_alias(self.settings.model_name, alias)
                except MlflowException as exc:
                    if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                        out[alias] = None  # no such model or alias yet
                        continue
                    raise
                metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
                out[alias] = {
                    "version": mv.version,
                    "run_id": mv.run_id,
                    "gate": mv.tags.get("gate.decision"),
                    "metrics": {k: v for k, v in sorted(metrics.items()) if not k.startswith("slice_")},
                }
        except Exception as exc:  # MLflow down or misconfigured: the page says so, evaluation goes on
            return {"reachable": False, "tracking_uri": self.settings.mlflow_uri, "error": str(exc)[:300]}
        return out

    def _alerts(self) -> list[dict] | None:
        url = f"{self.settings.alertmanager_url}/api/v2/alerts"
        try:
            response = httpx.get(url, params={"active": "true"}, timeout=1.0)
            response.raise_for_status()
            return [
                {
                    "name": a.get("labels", {}).get("alertname"),
                    "severity": a.get("labels", {}).get("severity"),
                    "state": a.get("status", {}).get("state"),
                    "since": a.get("startsAt"),
                }
                for a in response.json()
            ]
        except (httpx.HTTPError, ValueError):
            return None  # not running (e.g. in tests): "unreachable" on the page

    def _retraining(self) -> dict | None:
        """The retrainer's running or last retraining (None: retrainer not reachable)."""
        try:
            response = httpx.get(f"{self.settings.retrainer_url}/api/status", timeout=1.0)
            response.raise_for_status()
            body = response.json()
            return {"running": body.get("running"), "last": body.get("last")}
        except (httpx.HTTPError, ValueError):
            return None

    def run(self) -> None:
        log.info(
            "evaluator: every %.0fs, window %d rows / %.0fs, at least %d rows",
            self.config.interval_seconds, self.config.window_rows, self.config.window_seconds, self.config.min_rows,
        )  # fmt: skip
        while not self._stop.is_set():
            try:
                self.refresh_context()
                self.evaluate_once()
            except Exception as exc:
                # Gauges keep their last values and the timestamp stops: MonitorStale says we are blind.
                self.metrics.errors.inc()
                log.exception("evaluation failed: %s", exc)
                with self.lock:
                    self.history.append(
                        {"evaluated_at": time.time(), "verdict": "error", "error": str(exc)[:300]}
                    )
            if self._stop.wait(self.config.interval_seconds):
                break

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="drift-evaluator", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    @property
    def evaluator_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def links(self) -> dict[str, str]:
        s = self.settings
        return {
            "mlflow": s.mlflow_uri,
            "serving_docs": f"{s.serving_url}/docs",
            "prometheus": f"http://{s.host}:{s.prometheus_port}",
            "alertmanager": s.alertmanager_url,
            "retrainer": f"{s.retrainer_url}/api/status",
            "report": "/reports/latest",
            "metrics": "/metrics",
            "status_json": "/api/status",
        }

    def status(self) -> dict:
        counts = self.store.counts()
        with self.lock:
            latest, history = self.latest, list(self.history)
            models, alerts, report_at = self.models, self.alerts, self.report_generated_at
            retraining = self.retraining
        return json_safe(
            {
                "model_name": self.settings.model_name,
                "models": models,
                "drift": latest,
                "report_generated_at": report_at,
                "history": history[::-1],  # newest first
                "store": {"path": str(self.config.database(self.settings)), **counts},
                "alerts": alerts,
                "retraining": retraining,
                "evaluator_alive": self.evaluator_alive,
                "config": asdict(self.config),
                "links": self.links(),
            }
        )


# --- HTTP ------------------------------------------------------------------------------------------


class BodyLimit:
    """413 for a body over the limit, 411 for a POST without Content-Length (so the limit holds before reading)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is None:
            return await _send_json(send, 411, "a Content-Length header is required (no chunked bodies)")
        try:
            size = int(length)
        except ValueError:
            return await _send_json(send, 400, f"invalid Content-Length {length[:32]!r}")
        if size > self.max_bytes:
            return await _send_json(
                send,
                413,
                f"body of {size} bytes is over the {self.max_bytes}-byte limit; send smaller batches",
            )
        # The server (h11/httptools) rejects a body longer than its Content-Length, so this bound holds.
        return await self.app(scope, receive, send)


async def _send_json(send, status: int, error: str) -> None:
    log.warning("refused a request (%d): %s", status, error)
    body = JSONResponse({"error": error}).body
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _describe(errors: list[dict]) -> list[dict]:
    """Validation errors without the offending input (it can be megabytes) but with the JSON decoder's reason."""
    out = []
    for e in errors:
        item = {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
        if e.get("type") == "json_invalid" and e.get("ctx", {}).get("error"):
            item["msg"] = f"{item['msg']}: {e['ctx']['error']}"
        out.append(item)
    return out


def create_app(settings: Settings | None = None, config: MonitorConfig | None = None) -> FastAPI:
    settings = settings or Settings()
    config = config or MonitorConfig.from_settings(settings)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A down MLflow must not hold the evaluator for minutes of retries (its default is 7, with backoff).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    store = RecordStore(config.database(settings), synchronous=config.synchronous)
    metrics = MonitorMetrics()
    monitor = Monitor(settings, config, store, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info(
            "monitor: store %s (%d records), MLflow %s, model %s",
            store.path, store.counts()["records"], settings.mlflow_uri, settings.model_name,
        )  # fmt: skip
        monitor.start()
        try:
            yield
        finally:
            monitor.stop()
            store.close()

    app = FastAPI(
        title="mlops-sandbox monitor",
        description="Inference records and labels in, drift and live quality out.",
        lifespan=lifespan,
    )
    app.state.monitor = monitor
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request, exc: RequestValidationError):
        errors = _describe(exc.errors())
        reasons = "; ".join(f"{'.'.join(e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors[:3])
        log.warning("refused %s %s (422): %s", request.method, request.url.path, reasons)
        return JSONResponse(
            {
                "error": f"invalid request, nothing stored: {reasons}",
                "errors": errors[:20],
                "error_count": len(errors),
            },
            status_code=422,
        )

    @app.post("/ingest")
    def ingest(body: IngestBody) -> dict:
        """Store inference records; 200 only after the commit. A known request_id counts as a duplicate."""
        inserted, duplicates = monitor.ingest([r.model_dump() for r in body.records])
        return {"inserted": inserted, "duplicates": duplicates}

    @app.post("/labels", responses={422: {"description": "none of the request ids is known; nothing stored"}})
    def labels(body: LabelsBody):
        """Attach delayed ground truth by request id; unknown ids are listed (422 when all are unknown)."""
        updated, unknown = monitor.label([item.model_dump() for item in body.labels])
        if updated == 0:
            log.warning("refused POST /labels (422): none of %d request ids is known", len(unknown))
            return JSONResponse(
                {
                    "error": f"none of the {len(unknown)} request ids is known to the monitor; nothing stored "
                    "(labels are kept only for ingested records: send them after the records)",
                    "updated": 0,
                    "unknown": unknown,
                },
                status_code=422,
            )
        return {"updated": updated, "unknown": unknown}

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/status")
    def status() -> JSONResponse:
        return JSONResponse(monitor.status())

    @app.get("/api/records")
    def records(
        limit: Annotated[int, Query(ge=1, le=MAX_EXPORT_ROWS)] = 5_000,
        labelled: bool = False,
        since: Annotated[float | None, Query(ge=0, description="received at or after (unix s)")] = None,
    ) -> dict:
        """The latest ``limit`` stored records, oldest first (``labelled=true``: only those with a label).

        The retrainer's production data: what serving saw, with the ground truth that came back.
        """
        found = store.export(limit, labelled_only=labelled, since=since)
        return {"count": len(found), "records": found}

    @app.get("/reports/latest")
    def latest_report():
        try:
            path = monitor.report()
        except Exception as exc:  # Evidently failing to draw must not take the page down with a traceback
            log.exception("rendering the drift report failed")
            return JSONResponse(
                {"error": f"the drift report could not be rendered ({exc}); see the monitor's log"},
                status_code=500,
            )
        if path is None:
            return JSONResponse(
                {"error": f"no report yet: one is written once a window has {config.min_rows} rows"},
                status_code=404,
            )
        return FileResponse(path, media_type="text/html")

    @app.get("/healthz")
    def healthz() -> dict:
        store.ping()
        return {"status": "ok", "evaluator_alive": monitor.evaluator_alive}

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return render_status_page(monitor.status(), config)

    return app


# --- the status page -------------------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    seconds = max(0, time.time() - ts)
    text = f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"
    return f"{time.strftime('%H:%M:%S', time.localtime(ts))} ({text})"


VERDICT_STYLE = {
    "drift": ("#c62828", "DRIFT"),
    "no_drift": ("#2e7d32", "no drift"),
    INSUFFICIENT: ("#757575", "insufficient data"),
}


def _retraining_text(retraining: dict | None, url: str) -> str:
    if retraining is None:
        return f"retrainer not reachable at {_fmt(url)}"
    if run := retraining.get("running"):
        return f"<b>running</b> since {_ago(run.get('started_at'))}, started by {_fmt(run.get('alertname'))}"
    last = retraining.get("last")
    if not last:
        return "none yet"
    outcome = {"promoted": "promoted", "rejected": "rejected by the gate", "failed": "failed"}.get(
        last["state"], last["state"]
    )
    detail = last.get("gate_reason") or last.get("error") or ""
    version = f" v{_fmt(last.get('model_version'))}" if last.get("model_version") else ""
    return (
        f"last: {_fmt(last.get('alertname'))} {_ago(last.get('started_at'))} -> <b>{outcome}</b>{version}"
        f" in {_fmt(last.get('seconds'))} s: {_fmt(detail)}"
    )


def render_status_page(status: dict, config: MonitorConfig) -> str:
    drift = status.get("drift") or {}
    color, verdict = VERDICT_STYLE.get(drift.get("verdict"), ("#757575", "not evaluated yet"))
    links = status["links"]
    feature_rows = "".join(
        f"<tr{' class=drifted' if f['drifted'] else ''}><td>{_fmt(name)}</td><td>{_fmt(f['method'])}</td>"
        f"<td>{_fmt(f['score'])}</td><td>{_fmt(f['threshold'], 2)}</td>"
        f"<td>{_fmt(f['missing_share'], 2)}</td><td>{'DRIFTED' if f['drifted'] else 'ok'}</td></tr>"
        for name, f in (drift.get("features") or {}).items()
    )
    if not feature_rows:
        feature_rows = (
            f"<tr><td colspan=6>no per-feature verdict: the window needs at least {config.min_rows} rows "
            f"of one model version (has {drift.get('rows', 0)})</td></tr>"
        )
    quality = drift.get("quality")
    quality_text = (
        f"accuracy <b>{_fmt(quality['accuracy'])}</b>, F1 <b>{_fmt(quality['f1'])}</b> on {quality['rows']} labelled rows"
        if quality
        else f"not enough labels yet ({drift.get('labelled_rows', 0)} of {config.min_labelled_rows} needed)"
    )
    models = status.get("models") or {}
    if models.get("reachable") is False:
        model_rows = f"<tr><td colspan=3>MLflow unreachable at {_fmt(models.get('tracking_uri'))}: {_fmt(models.get('error'))}</td></tr>"
    else:
        model_rows = "".join(
            f"<tr><td>{alias}</td><td>{_fmt(m['version']) if m else '–'}</td><td>"
            + (
                ", ".join(f"{k} {_fmt(v)}" for k, v in m["metrics"].items() if k != "holdout_rows")
                if m
                else ""
            )
            + "</td></tr>"
            for alias, m in ((a, models.get(a)) for a in ("champion", "challenger"))
        )
    alerts = status.get("alerts")
    if alerts is None:
        alerts_html = f"Alertmanager not reachable at {_fmt(links['alertmanager'])}"
    elif not alerts:
        alerts_html = "none firing"
    else:
        alerts_html = "<ul>" + "".join(
            f"<li><b>{_fmt(a['name'])}</b> ({_fmt(a['severity'])}, {_fmt(a['state'])}) since {_fmt(a['since'])}</li>"
            for a in alerts
        ) + "</ul>"  # fmt: skip
    retraining_html = _retraining_text(status.get("retraining"), links["retrainer"])
    history_rows = "".join(
        f"<tr><td>{_ago(h.get('evaluated_at'))}</td><td>{_fmt(h.get('verdict'))}</td>"
        f"<td>{_fmt(h.get('drift_share'), 2)}</td><td>{_fmt(h.get('rows'))}</td><td>{_fmt(h.get('model_version'))}</td>"
        f"<td>{_fmt(', '.join(h.get('drifted_features') or []) or h.get('error'))}</td></tr>"
        for h in status.get("history", [])[:15]
    )
    store = status["store"]
    link_html = " · ".join(
        f'<a href="{html.escape(url)}">{html.escape(name.replace("_", " "))}</a>'
        for name, url in links.items()
    )
    share = drift.get("drift_share")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{max(5, int(config.interval_seconds))}">
<title>monitor · {_fmt(status["model_name"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 70rem; color: #222 }}
.verdict {{ display: inline-block; padding: .3rem .8rem; color: #fff; background: {color}; border-radius: .3rem; font-weight: bold }}
table {{ border-collapse: collapse; margin: .5rem 0 1.5rem }} td, th {{ border-bottom: 1px solid #ddd; padding: .25rem .8rem; text-align: left }}
tr.drifted td {{ color: #c62828; font-weight: bold }} .big {{ font-size: 2rem; font-weight: bold }}
</style></head><body>
<h1>Drift monitor · {_fmt(status["model_name"])}</h1>
<p>{link_html}</p>
<p><span class="verdict">{verdict}</span> &nbsp; drift share <span class="big">{_fmt(share, 2)}</span>
 &nbsp; {_fmt(drift.get("rows", 0))} rows of version {_fmt(drift.get("model_version"))}
 (min {config.min_rows}, window {config.window_rows} rows / {config.window_seconds:.0f} s),
 evaluated {_ago(drift.get("evaluated_at"))} in {_fmt(drift.get("duration_seconds"), 2)} s, every {config.interval_seconds:.0f} s</p>
<h2>Features</h2>
<table><tr><th>feature</th><th>method</th><th>score</th><th>threshold</th><th>missing share</th><th>verdict</th></tr>
{feature_rows}</table>
<h2>Live quality</h2><p>{quality_text}</p>
<h2>Models</h2>
<table><tr><th>alias</th><th>version</th><th>metrics</th></tr>{model_rows}</table>
<h2>Alerts</h2><p>{alerts_html}</p>
<h2>Retraining</h2><p>{retraining_html}</p>
<h2>Recent evaluations</h2>
<table><tr><th>when</th><th>verdict</th><th>drift share</th><th>rows</th><th>version</th><th>drifted / error</th></tr>
{history_rows}</table>
<p>Store: {store["records"]} records, {store["labelled"]} labelled ({_fmt(store["path"])}).
 Evidently report of the last judged window: <a href="/reports/latest">HTML</a> (rendered when opened).</p>
</body></html>"""
