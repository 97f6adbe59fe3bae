"""Serving -> monitor feed: predictions never wait for it and never fail because of it.

``submit`` appends one item per served batch to a queue bounded in records (a batch that does not
fit is dropped and its records counted), and does nothing else on the request path. The sender
thread wakes every ``flush_seconds``, or as soon as ``batch_size`` records wait (not once per
served batch: each wake-up takes the GIL from the request path). It takes everything queued,
builds the ``/ingest`` records there and encodes them ``batch_size`` at a time into the outbox
(services/serving/outbox.py: memory, then a spool on disk). The poster thread POSTs the outbox's
oldest body until the monitor takes it, retrying with exponential backoff for as long as the
monitor is down or failing (a 4xx drops the body: its records are bad, and counted); a slower
monitor delays records instead of losing them. Records are dropped (counted) only when the queue
or the whole outbox is full. Nothing is lost silently: sent + dropped + queued + in the outbox
(+ in flight) = submitted.

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
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from pydantic_core import to_json

from sandbox.settings import Settings
from services.serving.outbox import Body, Outbox
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
        timeout: float = 2.0,
        count: Callable[[str, int], None] = lambda outcome, n: None,
        rejected_queue_size: int = 100,
        rejected_queue_bytes: int = 4_194_304,
        rejected_sample_rows: int = 10,
        count_rejected: Callable[[str, int], None] = lambda outcome, n: None,
        shadow: Callable[[list[Batch]], list[Shadow | None]] | None = None,
        outbox: Outbox | None = None,
    ):
        self.url = url.rstrip("/") + "/ingest"
        self.pending: deque[Batch] = deque()
        self.queue_size = queue_size  # in records, not items
        self.queued = 0  # records waiting in ``pending``
        self._lock = threading.Lock()
        self._ready = threading.Event()  # set once batch_size records wait (or to stop)
        self.batch_size, self.flush_seconds, self.timeout = batch_size, flush_seconds, timeout
        # count("sent" | "retried" | "spooled" | "dropped_queue_full" | "dropped_undeliverable", n)
        self.count = count
        self.rejected: deque[Rejection] = deque()
        self.rejected_bytes, self.rejected_queue_bytes = 0, rejected_queue_bytes
        self.rejected_queue_size = rejected_queue_size  # in refused requests
        self.rejected_sample_rows, self.count_rejected = rejected_sample_rows, count_rejected
        self.shadow = shadow  # ShadowScorer.score, or None: no shadow
        self.outbox = outbox or Outbox(Settings.model_fields["feed_memory_bytes"].default)  # memory only
        self._stop = threading.Event()
        self._halt = threading.Event()  # the poster ends now (stop's deadline passed)
        self._sender: threading.Thread | None = None
        self._poster: threading.Thread | None = None

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

    def _enqueue(self, records: list[dict], rejections: list[Rejection]) -> None:
        """Encode ``records`` into bodies of at most ``batch_size``, the refused requests with the first."""
        for start in range(0, max(len(records), 1 if rejections else 0), self.batch_size):
            chunk, riding = records[start : start + self.batch_size], rejections if start == 0 else []
            payload: dict = {"records": chunk}
            if riding:
                payload["rejected"] = [item for r in riding for item in r.sample(self.rejected_sample_rows)]
            # pydantic-core's encoder: far cheaper than json.dumps here
            queued = self.outbox.put(to_json(payload), len(chunk), len(riding))
            if queued is not None and queued.path is not None:
                self.count("spooled", len(chunk))
            elif queued is None:
                self.count("dropped_queue_full", len(chunk))
                self.count_rejected("dropped_queue_full", len(riding))
                log.warning(
                    "feed outbox full: dropped %d records (+%d refused requests)", len(chunk), len(riding)
                )

    def _deliver(self, client: httpx.Client, body: Body) -> bool:
        """POST ``body`` until the monitor takes it (True) or refuses it for good (True, counted);
        False when stopped first (the body stays in the outbox)."""
        headers = {"content-type": "application/json"}
        delay, attempt = 0.2, 0
        while True:
            if attempt:
                self.count("retried", body.records)
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
            attempt += 1
            try:
                response = client.post(self.url, content=body.data, headers=headers, timeout=self.timeout)
            except httpx.HTTPError as exc:
                if attempt == 1 or attempt % 10 == 0:
                    log.warning(
                        "monitor unreachable (%s), attempt %d; %d records wait",
                        exc,
                        attempt,
                        self.outbox.records,
                    )
                continue
            if response.status_code < 300:
                self.count("sent", body.records)
                self.count_rejected("sent", body.rejected)
                return True
            if 400 <= response.status_code < 500:  # the records are bad: retrying won't help
                log.error(
                    "monitor refused %d records (+%d refused requests): %s",
                    body.records, body.rejected, response.text[:300],
                )  # fmt: skip
                self.count("dropped_undeliverable", body.records)
                self.count_rejected("dropped_undeliverable", body.rejected)
                return True
            if attempt == 1 or attempt % 10 == 0:
                log.warning("monitor answered %d, attempt %d; retrying", response.status_code, attempt)

    def run(self) -> None:
        """The sender: queued batches -> records -> encoded bodies in the outbox."""
        while True:
            records, rejections = self._take()
            if records or rejections:
                self._enqueue(records, rejections)
            if self._stop.is_set() and not self.pending and not self.rejected:
                break

    def post(self) -> None:
        """The poster: the outbox's oldest body to the monitor, one at a time."""
        with httpx.Client() as client:
            while not self._halt.is_set():
                body = self.outbox.head(timeout=self.flush_seconds)
                if body is None:
                    if self._stop.is_set() and not (self._sender and self._sender.is_alive()):
                        return
                    continue
                if not self._deliver(client, body):
                    return
                self.outbox.done(body)

    def start(self) -> None:
        self._sender = threading.Thread(target=guarded(self.run), name="monitor-feed", daemon=True)
        self._poster = threading.Thread(target=guarded(self.post), name="monitor-feed-post", daemon=True)
        self._sender.start()
        self._poster.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking work, deliver what can be within ``timeout``, keep the rest in the spool."""
        deadline = time.monotonic() + timeout
        self._stop.set()  # the sender drains the queue once more, then ends; the poster stops retrying
        self._ready.set()
        for thread in (self._sender, self._poster):
            if thread:
                thread.join(max(0.0, deadline - time.monotonic()))
        self._halt.set()
        if self._poster and self._poster.is_alive():
            self._poster.join(self.timeout + 1)  # at most the POST in flight
            if self._poster.is_alive():
                log.warning("feed poster still busy at stop; %d records stay in memory", self.outbox.records)
                return
        lost = self.outbox.close()
        if lost:
            self.count("dropped_undeliverable", lost)
            log.warning("feed stopped with %d records the spool had no room for: dropped", lost)
        if self.outbox.records:
            log.info("feed stopped; %d records wait in the spool for the next start", self.outbox.records)


def guarded(target: Callable[[], None]) -> Callable[[], None]:
    """A feed thread that dies says so in the log at once (the request path never notices)."""

    def run() -> None:
        try:
            target()
        except Exception:
            log.exception(
                "%s died: records stay queued, nothing more is sent", threading.current_thread().name
            )
            raise

    return run
