"""The monitor's evaluation loop and state: every ``interval_seconds`` the latest window (rows of
the version that served the most recent record) is judged against that version's reference sample,
the data-quality checks (quality.py) run on the same window, the gauges are exported, the context of the status page (models, alerts, retraining) is refreshed.

``Monitor`` is what the HTTP app (app.py) calls: ``ingest``, ``label``, ``report``, ``status``.
Its collaborators (store, metrics, reference loader) are passed in, so a test can give its own.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import httpx
import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge

from pipelines.features import LOAN_SCHEMA, FeatureSchema
from sandbox.settings import Settings
from services.monitor.drift import (
    drift_report_html,
    live_quality,
    load_reference,
    prepare,
    rows_of_latest_version,
)
from services.monitor.drift import evaluate_drift as run_drift
from services.monitor.quality import (
    INVERTED_LABELS,
    Profile,
    QualityResult,
    QualityThresholds,
    evaluate_quality,
    profile,
)
from services.monitor.store import RecordStore

log = logging.getLogger("sandbox.monitor")

HISTORY_KEYS = (
    "evaluated_at",
    "verdict",
    "drift_share",
    "rows",
    "model_version",
    "drifted_features",
    "duration_seconds",
    "quality_ok",
)
REJECTED_SAMPLE = 10


def _setting(name: str):
    """The default of ``Settings.monitor_<name>``: written there only, so the two cannot disagree."""
    return Settings.model_fields[f"monitor_{name}"].default


@dataclass(frozen=True)
class MonitorConfig:
    """The monitor's tunables. A settings field ``monitor_<name>`` overrides ``<name>`` (and gives its default)."""

    db_path: Path | None = _setting("db_path")  # None: <settings.home>/monitor/monitor.db
    interval_seconds: float = _setting("interval_seconds")
    window_rows: int = _setting("window_rows")
    window_seconds: float = _setting("window_seconds")
    min_rows: int = _setting("min_rows")  # see docs/drift-statistics.md for why 1,500
    drift_thresholds: dict = field(default_factory=lambda: dict(_setting("drift_thresholds")))  # by test name
    min_labelled_rows: int = _setting("min_labelled_rows")
    # No settings of their own (only tests change them): their defaults live here.
    quality_window_rows: int = 5_000
    quality_window_seconds: float = 86_400.0  # labels arrive late: look further back than for drift
    max_body_bytes: int = _setting("max_body_bytes")
    synchronous: str = "NORMAL"  # see store.py: survives a process kill, not a power loss
    max_rejected_rows: int = 10_000  # rejected rows kept (a sample for people, counts for the window)
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
        self.rejected = Counter(
            "sandbox_monitor_rejected_rows", "Rejected rows reported by serving and stored", registry=r
        )
        self.quality_ok = Gauge(
            "sandbox_data_quality_ok",
            "1 if the last judged window passed every data-quality check, 0 if one failed (NaN: not judged)",
            registry=r,
        )
        self.quality_failed = Gauge(
            "sandbox_data_quality_failed",
            "1 if the check failed on the last judged window (feature empty for table-level checks)",
            ["check", "feature"],
            registry=r,
        )
        self.rejected_share = Gauge(
            "sandbox_data_quality_rejected_share",
            "Rejected rows / all rows received in the last judged window's time span (NaN: not judged)",
            registry=r,
        )
        # Unknown until the first evaluation says otherwise: NaN never satisfies an alert threshold.
        for gauge in (self.drift_share, self.accuracy, self.f1, self.quality_ok, self.rejected_share):
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
        self.thresholds = QualityThresholds.from_settings(settings)
        # version -> (id of its reference frame, the frame prepared, its profile)
        self._references: dict[str, tuple[int, pd.DataFrame, Profile]] = {}
        self.last_evaluated_at: float | None = None  # records received by then have been judged
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
        self.data_quality: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Ingest side, called from request threads.
    def ingest(self, records: list[dict], rejected: list[dict] = ()) -> tuple[int, int, int]:
        """Store records and rejected rows (records first: a retry after a failure dedups them)."""
        inserted, duplicates = self.store.insert_records(records)
        stored_rejected = self.store.insert_rejected(rejected)
        self.metrics.ingested.inc(inserted)
        self.metrics.duplicates.inc(duplicates)
        self.metrics.rejected.inc(stored_rejected)
        with self.lock:
            self.ingested_since_evaluation += inserted
        return inserted, duplicates, stored_rejected

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
        reference = prepared_reference = reference_profile = None
        if version is not None and len(rows) >= cfg.min_rows:
            reference = self.reference_loader(self.settings.mlflow_uri, self.settings.model_name, version)
            prepared_reference, reference_profile = self._reference(version, reference)
        # Prepared once for both the drift verdict and the data-quality checks.
        prepared_rows = prepare(rows, self.schema)
        result = run_drift(
            prepared_rows, prepared_reference, self.schema, cfg.min_rows, model_version=version,
            thresholds=cfg.drift_thresholds, prepared=True,
        )  # fmt: skip
        labelled = self.store.labelled(cfg.quality_window_rows, cfg.quality_window_seconds, now=now)
        if version is not None:
            labelled = labelled[labelled["model_version"].astype(str) == version]
        data_quality, since, by_reason = self._data_quality(
            window, prepared_rows, reference_profile, now, labelled if version is not None else None
        )
        quality = live_quality(labelled, cfg.min_labelled_rows)
        duration = time.monotonic() - started
        summary = {
            **result.to_dict(),
            "window_rows_all_versions": len(window),
            "quality": quality,
            "labelled_rows": len(labelled),
            "evaluated_at": now,
            "duration_seconds": round(duration, 3),
            "quality_ok": data_quality.ok,
        }
        self._export(result, quality, len(labelled), duration, now)
        self._export_quality(data_quality)
        with self.lock:
            self.data_quality = {
                **data_quality.to_dict(),
                "evaluated_at": now,
                "model_version": version,
                "since": since,
                "by_reason": by_reason,
            }
            self.last_evaluated_at = now
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

    def _data_quality(
        self, window, rows, reference: Profile | None, now, labelled
    ) -> tuple[QualityResult, float, dict]:
        """The checks on this version's rows, with the rejected rows of the window's time span.

        The span starts at the window's oldest record when the window is full, else it is the whole
        ``window_seconds``: rejected and valid rows are then counted over the same time. A window
        that fails marks that span in the store, so its records never become training data; labels
        that look inverted mark the span of the labelled rows judged, which reaches further back.
        """
        cfg = self.config
        full = len(window) >= cfg.window_rows
        since = float(window["received_at"].min()) if full else now - cfg.window_seconds
        by_reason = self.store.rejected_counts(since)
        found = evaluate_quality(
            rows,
            reference,
            self.schema,
            self.thresholds,
            min_rows=cfg.min_rows,
            rejected=sum(by_reason.values()),
            valid_in_span=len(window),
            rejected_by_reason=by_reason,
            prepared=True,
            labelled=labelled,
        )
        if found.ok is False:
            marked = since
            if any(f.check == INVERTED_LABELS for f in found.failed):
                marked = min(since, float(labelled["received_at"].min()))
            self.store.mark_quality_failed(marked, now, sorted({f.check for f in found.failed}))
            log.warning("data quality failed: %s", "; ".join(f.message for f in found.failed))
        return found, since, by_reason

    def _reference(self, version: str, reference: pd.DataFrame) -> tuple[pd.DataFrame, Profile | None]:
        """The reference prepared and its profile, computed once a version (the loader caches the frame)."""
        known = self._references.get(version)
        if known is None or known[0] != id(reference):
            if len(self._references) >= 16:
                self._references.clear()
            prepared = prepare(reference, self.schema)
            found = None if reference.empty else profile(reference, self.schema)
            known = self._references[version] = (id(reference), prepared, found)
        return known[1], known[2]

    def _export_quality(self, found: QualityResult) -> None:
        m = self.metrics
        m.quality_failed.clear()  # checks that did not run now have no stale flags
        if found.ok is None:
            m.quality_ok.set(math.nan)
            m.rejected_share.set(math.nan)
            return
        m.quality_ok.set(1 if found.ok else 0)
        failed = {(f.check, f.feature) for f in found.failed}
        for check, feature in found.checked:
            m.quality_failed.labels(check, feature or "").set(1 if (check, feature) in failed else 0)
        for check, feature in failed:  # a failure always has its series, even if not listed as checked
            m.quality_failed.labels(check, feature or "").set(1)
        m.rejected_share.set(math.nan if found.rejected_share is None else found.rejected_share)

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
        from mlflow.tracking import MlflowClient

        from pipelines.registry import alias_version

        client = MlflowClient(self.settings.mlflow_uri)
        out: dict = {"reachable": True, "tracking_uri": self.settings.mlflow_uri}
        try:
            for alias in ("champion", "challenger"):
                mv = alias_version(client, self.settings.model_name, alias)
                if mv is None:  # no such model or alias yet
                    out[alias] = None
                    continue
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
            return {"running": body.get("running"), "last": body.get("last"), "release": body.get("release")}
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
            data_quality = self.data_quality or {}
        return json_safe(
            {
                "model_name": self.settings.model_name,
                "models": models,
                "drift": latest,
                "report_generated_at": report_at,
                "quality": {
                    "ok": data_quality.get("ok"),
                    "evaluated_at": data_quality.get("evaluated_at"),
                    "rows": data_quality.get("rows", 0),
                    "model_version": data_quality.get("model_version"),
                    "rejected_share": data_quality.get("rejected_share"),
                    "failed": data_quality.get("failed", []),
                },
                "rejected": {
                    "rows": data_quality.get("rejected_rows", 0),
                    "since": data_quality.get("since"),
                    "by_reason": data_quality.get("by_reason", {}),
                    "stored": self.store.rejected_stored(),
                    "sample": self.store.rejected_sample(REJECTED_SAMPLE),
                },
                "history": history[::-1],  # newest first
                "store": {"path": str(self.config.database(self.settings)), **counts},
                "alerts": alerts,
                "retraining": retraining,
                "evaluator_alive": self.evaluator_alive,
                "config": asdict(self.config),
                "links": self.links(),
            }
        )
