"""Serving -> monitor feed: predictions never wait for it and never fail because of it.

``submit`` appends one item per served batch to a queue bounded in records (a batch that does not
fit is dropped and its records counted), and does nothing else on the request path. The sender
thread wakes every ``flush_seconds``, or as soon as ``batch_size`` records wait (not once per
served batch: each wake-up takes the GIL from the request path). It takes everything queued,
builds the ``/ingest`` records there, POSTs them ``batch_size`` at a time, retrying with
exponential backoff; records that still cannot be delivered are counted as dropped. Nothing is
lost silently: sent + dropped + queued (+ in flight) = submitted.

Refused requests are a second item kind (``Rejection``, services/serving/rejections.py): queued
apart, bounded in bytes (``rejected_queue_bytes``: they carry the request body the sample is read
from), turned into at most ``rejected_sample_rows`` ``rejected`` items each in the sender thread,
and posted as ``/ingest``'s ``rejected`` list (with the records, or with ``records: []``). They are
counted per refused request by ``count_rejected(outcome, n)``, apart from the records.

Shadow scoring (services/serving/shadow.py) runs here too, off the request path: ``shadow(batches)``
scores the drained batches with the challenger before their records are built, and the records carry
its answer (``shadow_version``, ``shadow_prediction``, ``shadow_probability``; absent on a row it did
not score). With the feed off there is no shadow.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from pydantic_core import to_json

from services.serving.rejections import Rejection
from services.serving.shadow import Shadow

log = logging.getLogger("sandbox.serving.feed")


@dataclass(frozen=True, slots=True)
class ServedBatch:
    """One served batch as the request path has it (columns, not per-row dicts)."""

    ts: float
    model_version: str
    request_ids: list[str]
    features: dict[str, list]  # feature name -> one validated value per row
    predictions: list[int]
    probabilities: list[float]

    def __len__(self) -> int:
        return len(self.request_ids)

    def records(self, shadow: Shadow | None = None) -> list[dict]:
        """The DESIGN ``/ingest`` records, one per row, with the shadow's answer on the rows it scored."""
        names = list(self.features)
        records = [
            {
                "request_id": request_id, "ts": self.ts, "model_version": self.model_version,
                "features": dict(zip(names, values, strict=True)),
                "prediction": prediction, "probability": probability,
            }
            for request_id, values, prediction, probability in zip(
                self.request_ids, zip(*self.features.values(), strict=True), self.predictions, self.probabilities,
                strict=True,
            )
        ]  # fmt: skip
        if shadow is not None:
            for record, prediction, probability in zip(
                records, shadow.predictions, shadow.probabilities, strict=True
            ):
                if prediction is not None:
                    record.update(
                        shadow_version=shadow.version,
                        shadow_prediction=prediction,
                        shadow_probability=probability,
                    )
        return records


Batch = ServedBatch | list[dict]  # a served batch, or ready-made records


class MonitorFeed:
    def __init__(
        self,
        url: str,
        queue_size: int = 10_000,
        batch_size: int = 2000,
        flush_seconds: float = 0.5,
        max_retries: int = 3,
        timeout: float = 2.0,
        count: Callable[[str, int], None] = lambda outcome, n: None,
        rejected_queue_size: int = 100,
        rejected_queue_bytes: int = 4_194_304,
        rejected_sample_rows: int = 10,
        count_rejected: Callable[[str, int], None] = lambda outcome, n: None,
        shadow: Callable[[list[Batch]], list[Shadow | None]] | None = None,
    ):
        self.url = url.rstrip("/") + "/ingest"
        self.pending: deque[Batch] = deque()
        self.queue_size = queue_size  # in records, not items
        self.queued = 0  # records waiting in ``pending``
        self._lock = threading.Lock()
        self._ready = threading.Event()  # set once batch_size records wait (or to stop)
        self.batch_size, self.flush_seconds = batch_size, flush_seconds
        self.max_retries, self.timeout = max_retries, timeout
        self.count = count  # count("sent" | "retried" | "dropped_queue_full" | "dropped_undeliverable", n)
        self.rejected: deque[Rejection] = deque()
        self.rejected_bytes, self.rejected_queue_bytes = 0, rejected_queue_bytes
        self.rejected_queue_size = rejected_queue_size  # in refused requests
        self.rejected_sample_rows, self.count_rejected = rejected_sample_rows, count_rejected
        self.shadow = shadow  # ShadowScorer.score, or None: no shadow
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, batch: Batch) -> None:
        """Queue one served batch without blocking; when it does not fit, drop it and count its records."""
        n = len(batch)
        with self._lock:
            fits = self.queued + n <= self.queue_size
            if fits:
                self.pending.append(batch)
                self.queued += n
                wake = self.queued >= self.batch_size and not self._ready.is_set()
        if not fits:
            self.count("dropped_queue_full", n)
        elif wake:
            self._ready.set()

    def submit_rejected(self, rejection: Rejection) -> None:
        """Queue a refused request for the monitor's sample without blocking; dropped (counted) when full."""
        size = len(rejection.body) + 256
        with self._lock:
            fits = (
                self.rejected_bytes + size <= self.rejected_queue_bytes
                and len(self.rejected) < self.rejected_queue_size
            )
            if fits:
                self.rejected.append(rejection)
                self.rejected_bytes += size
        if not fits:
            self.count_rejected("dropped_queue_full", 1)

    def _take(self) -> tuple[list[dict], list[Rejection]]:
        """After ``flush_seconds``, or once ``batch_size`` records wait: the records of every queued batch,
        and the refused requests queued meanwhile."""
        self._ready.wait(self.flush_seconds)
        self._ready.clear()
        with self._lock:
            batches, self.pending, self.queued = self.pending, deque(), 0
            rejections, self.rejected, self.rejected_bytes = list(self.rejected), deque(), 0
        shadows = self._shadows(list(batches))
        records: list[dict] = []
        for batch, shadow in zip(batches, shadows, strict=True):
            records.extend(batch.records(shadow) if isinstance(batch, ServedBatch) else batch)
        return records, rejections

    def _shadows(self, batches: list[Batch]) -> list[Shadow | None]:
        """The shadow's answers per batch; whatever goes wrong there, the records still go out."""
        if self.shadow is not None and batches:
            try:
                return self.shadow(batches)
            except Exception:  # the scorer catches the model's failures; this guards the sender thread
                log.exception("shadow scoring failed; the records go without it")
        return [None] * len(batches)

    def _send(self, client: httpx.Client, batch: list[dict], rejections: list[Rejection] = ()) -> None:
        payload: dict = {"records": batch}
        if rejections:
            payload["rejected"] = [item for r in rejections for item in r.sample(self.rejected_sample_rows)]
        body = to_json(payload)  # pydantic-core's encoder: far cheaper than json.dumps here
        headers = {"content-type": "application/json"}
        delay = 0.2
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.count("retried", len(batch))
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, 5.0)
            try:
                response = client.post(self.url, content=body, headers=headers, timeout=self.timeout)
                if response.status_code < 300:
                    self.count("sent", len(batch))
                    self.count_rejected("sent", len(rejections))
                    return
                if 400 <= response.status_code < 500:  # the records are bad: retrying won't help
                    log.error(
                        "monitor rejected %d records (+%d refused requests): %s",
                        len(batch), len(rejections), response.text[:300],
                    )  # fmt: skip
                    break
            except httpx.HTTPError as exc:
                log.debug("monitor unreachable (%s), attempt %d", exc, attempt + 1)
        self.count("dropped_undeliverable", len(batch))
        self.count_rejected("dropped_undeliverable", len(rejections))
        log.warning(
            "dropped %d records (+%d refused requests) the monitor could not take (%s)",
            len(batch), len(rejections), self.url,
        )  # fmt: skip

    def run(self) -> None:
        with httpx.Client() as client:
            while True:
                records, rejections = self._take()
                # At most batch_size records a POST; the refused requests ride with the first (or alone).
                for start in range(0, max(len(records), 1 if rejections else 0), self.batch_size):
                    self._send(
                        client, records[start : start + self.batch_size], rejections if start == 0 else []
                    )
                if self._stop.is_set() and not self.pending and not self.rejected:
                    break

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="monitor-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._ready.set()
        if self._thread:
            self._thread.join(timeout)
