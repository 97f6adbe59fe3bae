"""The drift monitor's HTTP app (``uvicorn services.monitor.app:create_app --factory --port 8001``).

- ``POST /ingest``: inference records (the DESIGN contract) and rows serving rejected
  (``rejected``: reason, field, the raw row; docs/architecture.md), at most 5,000 of each a
  call, at least one in all; answers ``{"inserted", "duplicates", "rejected"}`` only once they
  are committed. A known ``request_id`` is stored once; rejected rows are never records.
- ``POST /labels``: ``{"labels": [{"request_id", "label": 0|1}]}`` -> ``{"updated", "unknown"}``.
  Unknown ids are listed with 200 when at least one label was stored; when none of the ids
  is known the answer is 422 (nothing was stored, and a client that labels before the
  records arrive should hear it). Labels of unknown ids are not kept.
- Bad input (types, unparseable JSON, more than 5,000 items) is 422, a body over the limit 413
  (chunked bodies are counted as they stream), a body that is not JSON 415; each with a reason
  (services/common.py), and nothing is stored.
- ``GET /metrics`` (text/plain), ``/api/status`` (JSON), ``/`` (the status page, HTML),
  ``/reports/latest`` (Evidently's HTML report of the last judged window, rendered when first
  asked for), ``/healthz`` for probes.
- ``GET /api/records?limit=N&labelled=true&clean_only=true``: the latest stored records (the
  retrainer's production data); ``clean_only`` leaves out records not judged yet and those of
  windows that failed data quality. ``model_version=V`` / ``shadow_version=W`` keep the rows V
  answered / W scored in shadow (the release controller's paired evidence).

The evaluation loop is evaluator.py, the page status_page.py; this module only wires HTTP.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, model_validator
from threadpoolctl import threadpool_limits

from sandbox.settings import Settings
from services.common import (
    ErrorBody,
    ValidationErrorBody,
    add_metrics_route,
    error_response,
    error_responses,
    guard,
    setup_logging,
)
from services.monitor.drift import load_reference
from services.monitor.evaluator import Monitor, MonitorConfig, MonitorMetrics
from services.monitor.quality import REASONS
from services.monitor.status_page import render_status_page
from services.monitor.store import RecordStore

log = logging.getLogger("sandbox.monitor")

MAX_ITEMS_PER_CALL = 5_000
MAX_EXPORT_ROWS = 50_000
HTML = {"content": {"text/html": {"schema": {"type": "string"}}}}


# --- request and response bodies ------------------------------------------------------------------

RequestId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
FeatureName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
# Finite: a NaN stored here would poison the drift statistics and cannot be sent back as JSON.
FeatureValue = (
    Annotated[float, Field(allow_inf_nan=False)] | Annotated[str, StringConstraints(max_length=256)] | None
)
Binary = Annotated[StrictInt, Field(ge=0, le=1)]  # StrictInt: true is not 1
SHADOW_FIELDS = ("shadow_version", "shadow_prediction", "shadow_probability")


class Record(BaseModel):
    # strict: "1" is not a prediction and true is not a number; unknown fields are ignored (forward compatible).
    model_config = ConfigDict(strict=True, extra="ignore")

    request_id: RequestId
    ts: float = Field(gt=0, allow_inf_nan=False, description="Unix seconds of the prediction")
    model_version: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    features: dict[FeatureName, FeatureValue] = Field(min_length=1, max_length=256)
    prediction: Binary
    probability: float = Field(ge=0, le=1)
    # The challenger's answer on this row, scored in shadow (never returned to the client); all three or none.
    shadow_version: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    shadow_prediction: Binary | None = None
    shadow_probability: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def shadow_fields_together(self) -> Record:
        given = [f for f in SHADOW_FIELDS if getattr(self, f) is not None]
        if given and len(given) != len(SHADOW_FIELDS):
            missing = sorted(set(SHADOW_FIELDS) - set(given))
            raise ValueError(f"a shadowed record needs all of {', '.join(SHADOW_FIELDS)}; missing {missing}")
        return self


class RejectedRow(BaseModel):
    """A row (or a whole request) serving refused; ``row`` is what the client sent, possibly invalid."""

    model_config = ConfigDict(strict=True, extra="ignore")

    ts: float = Field(gt=0, allow_inf_nan=False, description="Unix seconds of the refusal")
    reason: Literal[REASONS]  # type: ignore[valid-type]
    field: Annotated[str, StringConstraints(max_length=128)] | None = Field(
        None, description="The offending field (null: the request as a whole)"
    )
    row: dict[str, Any] | None = Field(None, max_length=256, description="The raw row, or null")


class IngestBody(BaseModel):
    model_config = ConfigDict(strict=True)
    records: list[Record] = Field(default_factory=list, max_length=MAX_ITEMS_PER_CALL)
    rejected: list[RejectedRow] = Field(default_factory=list, max_length=MAX_ITEMS_PER_CALL)

    @model_validator(mode="after")
    def something_to_store(self) -> IngestBody:
        if not self.records and not self.rejected:
            raise ValueError("nothing to ingest: send at least one item in records or rejected")
        return self


class Label(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    request_id: RequestId
    label: Binary


class LabelsBody(BaseModel):
    model_config = ConfigDict(strict=True)
    labels: list[Label] = Field(min_length=1, max_length=MAX_ITEMS_PER_CALL)


class IngestResult(BaseModel):
    inserted: int
    duplicates: int
    rejected: int = Field(description="Rejected rows stored")


class LabelsResult(BaseModel):
    updated: int
    unknown: list[str]


class LabelsRefused(ErrorBody):
    """None of the ids is known: nothing stored."""

    updated: int
    unknown: list[str]


class RecordsPage(BaseModel):
    count: int
    records: list[dict]


class Health(BaseModel):
    status: str
    evaluator_alive: bool


# --- HTTP ------------------------------------------------------------------------------------------


def create_app(
    settings: Settings | None = None,
    config: MonitorConfig | None = None,
    *,
    reference_loader=load_reference,
) -> FastAPI:
    """The monitor app; ``reference_loader(tracking_uri, model_name, version)`` gives a version's drift
    reference (MLflow's artifact by default; a test can give a frame of its own)."""
    settings = settings or Settings()
    config = config or MonitorConfig.from_settings(settings)
    setup_logging()
    # One BLAS thread: the evaluation's dot products (SciPy's Wasserstein distance) otherwise spin a
    # BLAS thread per core, twice the CPU for 5 % less wall time, taken from serving on a 2-core
    # machine (benchmarks/drift.py: 0.36 s CPU for a 0.2 s 10k-row evaluation, 0.19 s with one).
    threadpool_limits(1, user_api="blas")
    # A down MLflow must not hold the evaluator for minutes of retries (its default is 7, with backoff).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    store = RecordStore(
        config.database(settings), synchronous=config.synchronous, max_rejected=config.max_rejected_rows
    )
    metrics = MonitorMetrics()
    monitor = Monitor(settings, config, store, metrics, reference_loader=reference_loader)

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
    guard(
        app,
        max_body_bytes=config.max_body_bytes,
        too_large_hint="send smaller batches (or raise SANDBOX_MONITOR_MAX_BODY_BYTES)",
        invalid="invalid request, nothing stored",
    )
    add_metrics_route(app, metrics.registry)

    @app.post("/ingest", responses=error_responses(400, 413, 415, 422))
    def ingest(body: IngestBody) -> IngestResult:
        """Store inference records and rejected rows; 200 only after the commit. A known request_id counts
        as a duplicate."""
        # A validated model's __dict__ is its fields, as model_dump would copy them (15 ms per 2,000 records).
        inserted, duplicates, rejected = monitor.ingest(
            [r.__dict__ for r in body.records], [r.model_dump() for r in body.rejected]
        )
        return IngestResult(inserted=inserted, duplicates=duplicates, rejected=rejected)

    @app.post(
        "/labels",
        responses={
            **error_responses(400, 413, 415, 422),
            422: {
                "model": ValidationErrorBody | LabelsRefused,
                "description": "Body invalid, or none of the request ids is known; nothing stored",
            },
        },
    )
    def labels(body: LabelsBody) -> LabelsResult:
        """Attach delayed ground truth by request id; unknown ids are listed (422 when all are unknown)."""
        updated, unknown = monitor.label([item.model_dump() for item in body.labels])
        if updated == 0:
            log.warning("refused POST /labels (422): none of %d request ids is known", len(unknown))
            return error_response(
                422,
                f"none of the {len(unknown)} request ids is known to the monitor; nothing stored "
                "(labels are kept only for ingested records: send them after the records)",
                updated=0,
                unknown=unknown,
            )
        return LabelsResult(updated=updated, unknown=unknown)

    @app.get("/api/status")
    def status() -> JSONResponse:
        """Everything the status page shows, as JSON (NaN as null)."""
        return JSONResponse(monitor.status())

    @app.get("/api/records", responses=error_responses(422))
    def records(
        limit: Annotated[int, Query(ge=1, le=MAX_EXPORT_ROWS)] = 5_000,
        labelled: bool = False,
        since: Annotated[float | None, Query(ge=0, description="received at or after (unix s)")] = None,
        clean_only: Annotated[
            bool,
            Query(description="only records judged, outside every window that failed data quality"),
        ] = False,
        model_version: Annotated[
            str | None, Query(min_length=1, max_length=64, description="only rows this version answered")
        ] = None,
        shadow_version: Annotated[
            str | None,
            Query(min_length=1, max_length=64, description="only rows this version scored in shadow"),
        ] = None,
    ) -> RecordsPage:
        """The latest ``limit`` stored records, oldest first (``labelled=true``: only those with a label).

        The retrainer's production data: what serving saw, with the ground truth that came back.
        ``clean_only=true`` (what retraining asks for): a record received after the last evaluation
        or in a window that failed data quality is left out, so it never trains a model or becomes
        a drift reference (docs/retraining.md). ``model_version`` / ``shadow_version``: the release
        controller's paired evidence (rows one version answered, or scored in shadow, with their labels).
        """
        found = store.export(
            limit,
            labelled_only=labelled,
            since=since,
            clean_until=(monitor.last_evaluated_at or 0.0) if clean_only else None,
            model_version=model_version,
            shadow_version=shadow_version,
        )
        return RecordsPage(count=len(found), records=found)

    @app.get(
        "/reports/latest",
        response_class=FileResponse,
        responses={
            200: {**HTML, "description": "Evidently's data drift report of the last judged window"},
            **error_responses(
                described={
                    404: "No window judged yet",
                    500: "Evidently could not render the report (the monitor's log has why)",
                }
            ),
        },
    )
    def latest_report():
        try:
            path = monitor.report()
        except Exception as exc:  # Evidently failing to draw must not take the page down with a traceback
            log.exception("rendering the drift report failed")
            return error_response(
                500, f"the drift report could not be rendered ({exc}); see the monitor's log"
            )
        if path is None:
            return error_response(
                404, f"no report yet: one is written once a window has {config.min_rows} rows"
            )
        return FileResponse(path, media_type="text/html")

    @app.get("/healthz")
    def healthz() -> Health:
        store.ping()
        return Health(status="ok", evaluator_alive=monitor.evaluator_alive)

    @app.get("/", response_class=HTMLResponse, responses={200: {**HTML, "description": "The status page"}})
    def index() -> str:
        return render_status_page(monitor.status(), config)

    return app
