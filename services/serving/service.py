"""BentoML service that serves the MLflow champion (``bentoml serve services.serving.service:Serving``).

- ``POST /predict``: ``{"rows": [...]}`` validated against the feature schema (1-1000 rows, 1 MiB body);
  adaptive batching merges concurrent requests into one model call.
- ``GET /model``: the served version and an input example; ``/livez``, ``/readyz`` (ready once a model
  is loaded), ``/metrics`` (BentoML's + ``sandbox_*``), ``/docs`` (OpenAPI).
- A watcher follows the ``champion`` alias and swaps after a smoke prediction; a broken version is
  never served. Each served batch goes to the monitor through a non-blocking feed.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated

import bentoml
import pandas as pd
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipelines.features import LOAN_SCHEMA
from pipelines.train import features_only
from sandbox.settings import Settings
from services.serving.feed import MonitorFeed
from services.serving.middleware import PREDICT_PATHS, BodySizeLimit, JsonOnly, OpenAPIFix, send_json
from services.serving.model_store import LoadedModel, ModelHolder
from services.serving.rows import EXAMPLE_ROW, MAX_ROWS, LoanRow, Prediction

log = logging.getLogger("sandbox.serving")
SETTINGS = Settings()  # reads the environment only
STATE: dict = {"holder": None}  # this worker's model holder, for the readiness gate and GET /model


def create_metrics():
    """Created in the worker, after BentoML has set PROMETHEUS_MULTIPROC_DIR (module import is too early)."""
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "info": Gauge(
            "sandbox_model_info", "1 for the model version this worker serves", ["model", "version"],
            multiprocess_mode="livemax",
        ),
        "load_failures": Counter(
            "sandbox_model_load_failures_total", "Versions that failed to load or smoke-test", ["model"]
        ),
        "swaps": Counter("sandbox_model_swaps_total", "Model versions swapped in", ["model"]),
        "predictions": Counter(
            "sandbox_predictions_total", "Rows predicted, by predicted class", ["model", "version", "predicted_class"]
        ),
        "probability": Histogram(
            "sandbox_prediction_probability", "Predicted P(default)", ["model"],
            buckets=[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        ),
        "feed": Counter(
            "sandbox_monitor_feed_records_total",
            "Inference records for the monitor by outcome: sent, retried, dropped_queue_full, dropped_undeliverable",
            ["outcome"],
        ),
    }  # fmt: skip


class ReadinessGate:
    """503 with what to do on ``/predict`` while no model is loaded (BentoML would hide the reason)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        holder = STATE["holder"]
        if (
            scope["type"] == "http"
            and scope["path"] in PREDICT_PATHS
            and (holder is None or holder.current is None)
        ):
            return await send_json(
                send, 503,
                {"error": f"no model is being served: no '{SETTINGS.model_name}@champion' in MLflow yet; "
                 "run `sandbox train`, then retry (the service polls the alias)"},
            )  # fmt: skip
        return await self.app(scope, receive, send)


async def model_info(request: Request) -> JSONResponse:
    holder = STATE["holder"]
    if holder is None or holder.current is None:
        return JSONResponse({"error": "no model loaded yet; run `sandbox train`"}, status_code=503)
    return JSONResponse(holder.current.describe())


# GET routes (BentoML APIs are POST-only); mounted last, so BentoML's own routes win.
info_app = Starlette(routes=[Route("/model", model_info, methods=["GET"])])


@bentoml.service(
    name="loan-default-serving",
    workers=SETTINGS.serving_workers,
    traffic={"timeout": 30},
    logging={"access": {"enabled": False}},
)
@bentoml.asgi_app(info_app, path="/")
class Serving:
    def __init__(self) -> None:
        self.metrics = create_metrics()
        self.feed = None
        if SETTINGS.monitor_feed:
            self.feed = MonitorFeed(
                SETTINGS.monitor_url,
                queue_size=SETTINGS.feed_queue_size,
                batch_size=SETTINGS.feed_batch_size,
                flush_seconds=SETTINGS.feed_flush_seconds,
                max_retries=SETTINGS.feed_max_retries,
                timeout=SETTINGS.feed_timeout_seconds,
                count=lambda outcome, n: self.metrics["feed"].labels(outcome).inc(n),
            )
            self.feed.start()
        self.holder = ModelHolder(
            SETTINGS.mlflow_uri,
            SETTINGS.model_name,
            LOAN_SCHEMA,
            on_swap=self._on_swap,
            on_failure=self._on_failure,
        )
        STATE["holder"] = self.holder
        try:
            self.holder.refresh()
        except Exception as exc:  # MLflow not up yet: not ready, the watcher keeps trying
            log.warning("MLflow not reachable at start (%s); will retry", exc)
        self.holder.start(SETTINGS.serving_poll_seconds)
        log.info(
            "serving %s@champion from %s (%s), monitor feed %s",
            SETTINGS.model_name, SETTINGS.mlflow_uri, self.holder.describe_current(),
            SETTINGS.monitor_url if self.feed else "off",
        )  # fmt: skip

    def _on_swap(self, old: LoadedModel | None, new: LoadedModel) -> None:
        if old is not None:
            self.metrics["info"].labels(old.name, old.version).set(0)
        self.metrics["info"].labels(new.name, new.version).set(1)
        self.metrics["swaps"].labels(new.name).inc()

    def _on_failure(self, version: str, reason: str) -> None:
        self.metrics["load_failures"].labels(SETTINGS.model_name).inc()

    def __is_ready__(self) -> bool:
        return self.holder.current is not None

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.holder.stop()
        if self.feed:
            self.feed.stop()

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=SETTINGS.serving_max_batch_size,
        max_latency_ms=SETTINGS.serving_max_latency_ms,
    )
    def predict(
        self,
        rows: Annotated[
            list[LoanRow],
            Field(min_length=1, max_length=MAX_ROWS, examples=[[EXAMPLE_ROW]], description="1 to 1000 rows"),
        ],
    ) -> list[Prediction]:
        """Predict default for each row: class, probability, served version and a request id per row."""
        served = self.holder.current  # one version for the whole batch, even if a swap lands meanwhile
        frame = features_only(pd.DataFrame([row.model_dump() for row in rows]), LOAN_SCHEMA)
        probabilities = served.predict_proba(frame)
        now = time.time()
        out, records = [], []
        for features, probability in zip(frame.to_dict(orient="records"), probabilities, strict=True):
            request_id = uuid.uuid4().hex
            label = int(probability >= 0.5)
            out.append(
                Prediction(
                    request_id=request_id,
                    prediction=label,
                    probability=round(float(probability), 6),
                    model=served.name,
                    model_version=served.version,
                )
            )
            records.append(
                {
                    "request_id": request_id, "ts": now, "model_version": served.version,
                    "features": {k: (None if pd.isna(v) else v) for k, v in features.items()},
                    "prediction": label, "probability": float(probability),
                }
            )  # fmt: skip
        positives = sum(p.prediction for p in out)
        predictions = self.metrics["predictions"]
        predictions.labels(served.name, served.version, "1").inc(positives)
        predictions.labels(served.name, served.version, "0").inc(len(out) - positives)
        for p in probabilities:
            self.metrics["probability"].labels(served.name).observe(float(p))
        if self.feed:
            self.feed.submit(records)
        return out


Serving.add_asgi_middleware(ReadinessGate)
Serving.add_asgi_middleware(OpenAPIFix)
Serving.add_asgi_middleware(JsonOnly)
Serving.add_asgi_middleware(BodySizeLimit, max_bytes=SETTINGS.serving_max_body_bytes)
