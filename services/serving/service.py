"""BentoML service that serves the MLflow champion (``bentoml serve services.serving.service:Serving``).

- ``POST /predict``: ``{"rows": [...]}`` validated against the feature schema (1-1000 rows, 1 MiB body);
  adaptive batching merges concurrent requests into one model call.
- ``GET /model``: the served version and an input example; ``/livez``, ``/readyz`` (ready once a model
  is loaded), ``/metrics`` (BentoML's + ``sandbox_*``), ``/docs`` (OpenAPI).
- A watcher follows the ``champion`` alias and swaps after a smoke prediction; a broken version is
  never served. Each served batch goes to the monitor through a non-blocking feed.
- A second watcher follows ``challenger`` (same load and smoke test): the feed's sender scores the
  served rows with it in shadow (services/serving/shadow.py); its answer only reaches the monitor.
"""

from __future__ import annotations

import os

# One native thread per worker, set before scikit-learn loads its OpenMP runtime (the env var is the
# only switch that reaches every thread: BentoML predicts in a thread pool, and OpenMP limits set at
# run time are per thread). This machine has 2 cores and serving runs 2 workers: with a pool per
# core each, 4+ threads fight for 2 cores, and the model (5 ms of pandas + 200 small trees a call) gains
# nothing from a second thread. An explicit OMP_NUM_THREADS from the launcher still wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import gc
import logging
import time
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from threadpoolctl import threadpool_limits

from pipelines.features import LOAN_SCHEMA
from pipelines.registry import CHALLENGER
from sandbox.settings import Settings
from services.common import BodySizeLimit, JsonOnly, send_json
from services.serving.feed import MonitorFeed, ServedBatch
from services.serving.middleware import PREDICT_PATHS, OpenAPIFix
from services.serving.model_store import LoadedModel, ModelHolder, ShadowHolder
from services.serving.outbox import Outbox
from services.serving.rejections import REQUEST_REASONS, ROW_REASONS, RejectionWatch, parse_refusal
from services.serving.rows import EXAMPLE_ROW, MAX_ROWS, LoanRow, Prediction, columns_of
from services.serving.shadow import ShadowBudget, ShadowScorer

log = logging.getLogger("sandbox.serving")
SETTINGS = Settings()  # reads the environment only
STATE: dict = {"holder": None, "shadow": None, "on_refusal": None}  # this worker's model holder (readiness
# gate, GET /model), its shadow holder (None: no shadow) and what RejectionWatch calls with a refused
# /predict (counts it, samples it to the monitor)


def create_metrics():
    """Created in the worker, after BentoML has set PROMETHEUS_MULTIPROC_DIR (module import is too early)."""
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "info": Gauge(
            "sandbox_model_info", "1 for the model version this worker serves", ["model", "version"],
            multiprocess_mode="livemax",
        ),
        "workers": Gauge(
            "sandbox_model_workers", "Serving workers (processes) that serve this model version now",
            ["model", "version"], multiprocess_mode="livesum",
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
            "Inference records for the monitor by outcome: sent, retried, spooled (waited on disk), "
            "dropped_queue_full, dropped_undeliverable",
            ["outcome"],
        ),
        "rows_rejected": Counter(
            "sandbox_rows_rejected_total",
            "Rows refused by /predict's validation, each once by its first error's feature and reason",
            ["field", "reason"],
        ),
        "requests_rejected": Counter(
            "sandbox_requests_rejected_total",
            "/predict requests refused whole, before they could be split into rows, by reason",
            ["reason"],
        ),
        "feed_rejected": Counter(
            "sandbox_monitor_feed_rejected_total",
            "Refused requests whose sample went to the monitor, by outcome: sent, dropped_queue_full, "
            "dropped_undeliverable",
            ["outcome"],
        ),
        "shadow_predictions": Counter(
            "sandbox_shadow_predictions_total", "Served rows the challenger scored in shadow", ["model", "version"]
        ),
        "shadow_skipped": Counter(
            "sandbox_shadow_skipped_rows_total",
            "Served rows the challenger did not score because the shadow had spent its share of the "
            "worker's time (SANDBOX_SERVING_SHADOW_MAX_BUSY); they went to the monitor without shadow fields",
            ["model"],
        ),
        "shadow_failures": Counter(
            "sandbox_shadow_failures_total",
            "Shadow scorings that failed (a challenger that did not load, or raised or answered nonsense on a "
            "drained set of batches); the records went without shadow fields",
            ["model"],
        ),
    }  # fmt: skip


def observe_many(child, values: np.ndarray) -> None:
    """``Histogram.observe`` for many values at once: one increment per bucket, not per value.

    prometheus_client has no bulk observe and each ``observe`` takes a lock and writes the multiprocess
    file; this adds the per-bucket counts instead (falls back to ``observe`` if its internals change).
    """
    bounds, buckets, total = (getattr(child, a, None) for a in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            child.observe(float(value))
        return
    # observe() counts a value in the first bucket whose upper bound is >= it (the last one is +Inf).
    index = np.minimum(np.searchsorted(np.asarray(bounds, dtype=float), values, side="left"), len(bounds) - 1)
    for i, n in enumerate(np.bincount(index, minlength=len(bounds)).tolist()):
        if n:
            buckets[i].inc(n)
    total.inc(float(np.sum(values)))


def settle_heap() -> None:
    """Collect, then move every object alive now (modules, the model) out of the collector's sight.

    With the model loaded a worker holds millions of long-lived objects; a full collection walks all
    of them and paused requests for 140-220 ms (the p99 spikes). Frozen, they are never walked again;
    the per-request garbage still is.
    """
    gc.collect()
    gc.freeze()


class ReadinessGate:
    """``/predict`` on a worker without a model: held until its next poll loads one, else a 503 saying why.

    Each BentoML worker loads the champion on its own: for a moment after a first promotion one
    worker serves while another has not polled yet. Holding the request (``serving_hold_seconds``
    at most) turns what was a burst of 503s into a short wait; with no champion at all the poll
    ends at once and the 503 names the fix.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        holder = STATE["holder"]
        if (
            scope["type"] == "http"
            and scope["path"] in PREDICT_PATHS
            and (holder is None or await holder.wait_for_model(SETTINGS.serving_hold_seconds) is None)
        ):
            return await send_json(
                send, 503,
                {"error": f"no model is being served: no '{SETTINGS.model_name}@champion' in MLflow yet; "
                 "run `sandbox train`, then retry (the service polls the alias)"},
            )  # fmt: skip
        return await self.app(scope, receive, send)


async def model_info(request: Request) -> JSONResponse:
    """The served model; on a worker that has not loaded the champion yet, held as ``/predict`` is
    (``ReadinessGate``): ``/readyz`` 200 from one worker must not be a 503 here from the other."""
    holder = STATE["holder"]
    if holder is None or await holder.wait_for_model(SETTINGS.serving_hold_seconds) is None:
        return JSONResponse({"error": "no model loaded yet; run `sandbox train`"}, status_code=503)
    shadow = STATE["shadow"]
    shadow_version = shadow.current.version if shadow is not None and shadow.current is not None else None
    return JSONResponse({**holder.current.describe(), "shadow_version": shadow_version})


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
        # Also cap the BLAS pools numpy loaded before this module could set OMP_NUM_THREADS (process-wide).
        threadpool_limits(int(os.environ["OMP_NUM_THREADS"]))
        self.metrics = create_metrics()
        self.feed = self.shadow = None
        if SETTINGS.monitor_feed and SETTINGS.serving_shadow_share > 0:  # the feed's sender does the scoring
            self.shadow = ShadowHolder(
                SETTINGS.mlflow_uri,
                SETTINGS.model_name,
                LOAN_SCHEMA,
                alias=CHALLENGER,
                champion=lambda: self.holder.current.version if self.holder.current else None,
                on_failure=lambda version, reason: (
                    self.metrics["shadow_failures"].labels(SETTINGS.model_name).inc()
                ),
                after_swap=settle_heap,
                fast_path=SETTINGS.serving_fast_path,
            )
            self.metrics["shadow_failures"].labels(SETTINGS.model_name)  # exists from the start, for rate()
            self.metrics["shadow_skipped"].labels(SETTINGS.model_name)
        if SETTINGS.monitor_feed:
            self.feed = MonitorFeed(
                SETTINGS.monitor_url,
                queue_size=SETTINGS.feed_queue_size,
                batch_size=SETTINGS.feed_batch_size,
                flush_seconds=SETTINGS.feed_flush_seconds,
                timeout=SETTINGS.feed_timeout_seconds,
                count=lambda outcome, n: self.metrics["feed"].labels(outcome).inc(n),
                rejected_queue_size=SETTINGS.feed_rejected_queue_size,
                rejected_queue_bytes=SETTINGS.feed_rejected_queue_bytes,
                rejected_sample_rows=SETTINGS.feed_rejected_sample_rows,
                count_rejected=lambda outcome, n: self.metrics["feed_rejected"].labels(outcome).inc(n),
                shadow=self._shadow_scorer().score if self.shadow else None,
                outbox=Outbox(SETTINGS.feed_memory_bytes, SETTINGS.feed_spool, SETTINGS.feed_spool_bytes),
            )
            self.feed.start()
        self.holder = ModelHolder(
            SETTINGS.mlflow_uri,
            SETTINGS.model_name,
            LOAN_SCHEMA,
            on_swap=self._on_swap,
            on_failure=self._on_failure,
            after_swap=settle_heap,
            fast_path=SETTINGS.serving_fast_path,
        )
        STATE["holder"] = self.holder
        for reason in REQUEST_REASONS:  # every series exists from the start: rate() sees the first refusal
            self.metrics["requests_rejected"].labels(reason)
        for reason in ROW_REASONS:
            self.metrics["rows_rejected"].labels("none", reason)
        STATE["on_refusal"] = self._on_refusal
        try:
            self.holder.refresh()
        except Exception as exc:  # MLflow not up yet: not ready, the watcher keeps trying
            log.warning("MLflow not reachable at start (%s); will retry", exc)
        if self.shadow is not None:
            STATE["shadow"] = self.shadow
            self.shadow.start(SETTINGS.serving_poll_seconds)  # its first poll at once, off the start-up path
        settle_heap()  # after the model loaded (a later first load or swap settles in the watcher)
        self.holder.start(SETTINGS.serving_poll_seconds)
        log.info(
            "serving %s@champion from %s (%s), monitor feed %s, shadow %s",
            SETTINGS.model_name, SETTINGS.mlflow_uri, self.holder.describe_current(),
            SETTINGS.monitor_url if self.feed else "off",
            f"of {CHALLENGER} on {SETTINGS.serving_shadow_share:.0%} of rows" if self.shadow else "off",
        )  # fmt: skip

    def _shadow_scorer(self) -> ShadowScorer:
        shadow_rows, failures = self.metrics["shadow_predictions"], self.metrics["shadow_failures"]
        skipped = self.metrics["shadow_skipped"]
        return ShadowScorer(
            lambda: self.shadow.current,
            LOAN_SCHEMA,
            SETTINGS.serving_shadow_share,
            count_rows=lambda version, n: shadow_rows.labels(SETTINGS.model_name, version).inc(n),
            count_failure=lambda: failures.labels(SETTINGS.model_name).inc(),
            budget=ShadowBudget(SETTINGS.serving_shadow_max_busy),
            count_skipped=lambda n: skipped.labels(SETTINGS.model_name).inc(n),
        )

    def _on_swap(self, old: LoadedModel | None, new: LoadedModel) -> None:
        for gauge in (self.metrics["info"], self.metrics["workers"]):
            if old is not None:
                gauge.labels(old.name, old.version).set(0)
            gauge.labels(new.name, new.version).set(1)
        self.metrics["swaps"].labels(new.name).inc()

    def _on_refusal(self, status: int, answer: bytes, body: bytes) -> None:
        """A refused /predict (from RejectionWatch, after the answer went out): count it, queue its sample."""
        rejection = parse_refusal(status, answer, body, time.time())
        if rejection is None:
            return
        if rejection.reason is not None:
            self.metrics["requests_rejected"].labels(rejection.reason).inc()
        for field, reason in rejection.counted(LOAN_SCHEMA.names):
            self.metrics["rows_rejected"].labels(field, reason).inc()
        if self.feed:
            self.feed.submit_rejected(rejection)

    def _on_failure(self, version: str, reason: str) -> None:
        self.metrics["load_failures"].labels(SETTINGS.model_name).inc()

    def __is_ready__(self) -> bool:
        return self.holder.current is not None

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.holder.stop()
        if self.shadow is not None:
            self.shadow.stop()
        if self.feed:
            self.feed.stop()

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=SETTINGS.serving_max_batch_size,
        max_latency_ms=SETTINGS.serving_max_latency_ms,
    )
    async def predict(  # async, and the model called inline: see below
        self,
        rows: Annotated[
            list[LoanRow],
            Field(min_length=1, max_length=MAX_ROWS, examples=[[EXAMPLE_ROW]], description="1 to 1000 rows"),
        ],
    ) -> Annotated[list[Prediction], ContentType("application/json")]:
        """Predict default for each row: class, probability, served version and a request id per row."""
        # async: BentoML runs a sync API in a thread pool, one hand-off there and back per batch. The model
        # is CPU-bound and holds the GIL for most of its ~6 ms, so the thread bought no overlap, only
        # wake-ups that a busy 2-core machine delays: concurrency-1 p50 7-9 ms here against 10-20 ms in a
        # thread, same throughput at concurrency 16. Meanwhile the event loop waits (requests queue in the
        # socket and join the next batch; /livez and /metrics wait at most one batch).
        # The ContentType above: without it BentoML works out the media type of every response from the
        # output's JSON schema, building a pydantic TypeAdapter each time (0.7 ms a response, measured).
        served = self.holder.current  # one version for the whole batch, even if a swap lands meanwhile
        columns = columns_of(rows, LOAN_SCHEMA)  # the rows are validated already: no model_dump per row
        probabilities = served.predict_columns(columns)  # NumPy, no DataFrame, once checked at load
        labels = (probabilities >= 0.5).astype(int).tolist()
        rounded = np.round(probabilities, 6).tolist()
        ids = os.urandom(16 * len(labels)).hex()  # 128 random bits a row, as uuid4().hex, in one call
        request_ids = [ids[i : i + 32] for i in range(0, len(ids), 32)]
        out = [
            Prediction(
                request_id=request_id, prediction=label, probability=probability,
                model=served.name, model_version=served.version,
            )  # (validating in pydantic-core is cheaper than model_construct's Python loop)
            for request_id, label, probability in zip(request_ids, labels, rounded, strict=True)
        ]  # fmt: skip
        positives = sum(labels)
        predictions = self.metrics["predictions"]
        predictions.labels(served.name, served.version, "1").inc(positives)
        predictions.labels(served.name, served.version, "0").inc(len(labels) - positives)
        observe_many(self.metrics["probability"].labels(served.name), probabilities)
        if self.feed:  # one queue item per batch; the sender builds the records
            self.feed.submit(
                ServedBatch(time.time(), served.version, request_ids, columns, labels, probabilities.tolist())
            )
        return out


# Outermost of ours (BentoML's list runs first-added outermost): it sees the guards' 413/415 and the 400s.
Serving.add_asgi_middleware(RejectionWatch, paths=PREDICT_PATHS, state=STATE)
Serving.add_asgi_middleware(ReadinessGate)
Serving.add_asgi_middleware(OpenAPIFix)
Serving.add_asgi_middleware(JsonOnly, paths=PREDICT_PATHS)
Serving.add_asgi_middleware(
    BodySizeLimit,
    max_bytes=SETTINGS.serving_max_body_bytes,
    hint="send fewer rows per request (or raise SANDBOX_SERVING_MAX_BODY_BYTES)",
)
