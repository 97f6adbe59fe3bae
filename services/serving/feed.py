"""Serving -> monitor feed: predictions never wait for it and never fail because of it.

``submit`` puts one item per served batch on a queue bounded in records (a batch that does not
fit is dropped and its records counted), and does nothing else on the request path: the
``/ingest`` records of a ``ServedBatch`` are built by the sender thread, which batches them and
POSTs them to the monitor, retrying with exponential backoff; a batch that still cannot be
delivered is counted as dropped. Nothing is lost silently: sent + dropped + queued = submitted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from pydantic_core import to_json

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

    def records(self) -> list[dict]:
        """The DESIGN ``/ingest`` records, one per row."""
        names = list(self.features)
        return [
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


Batch = ServedBatch | list[dict]  # a served batch, or ready-made records


class MonitorFeed:
    def __init__(
        self,
        url: str,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_seconds: float = 0.5,
        max_retries: int = 3,
        timeout: float = 2.0,
        count: Callable[[str, int], None] = lambda outcome, n: None,
    ):
        self.url = url.rstrip("/") + "/ingest"
        self.queue: queue.SimpleQueue[Batch] = queue.SimpleQueue()
        self.queue_size = queue_size  # in records, not items
        self.queued = 0  # records waiting in the queue
        self._lock = threading.Lock()
        self.batch_size, self.flush_seconds = batch_size, flush_seconds
        self.max_retries, self.timeout = max_retries, timeout
        self.count = count  # count("sent" | "retried" | "dropped_queue_full" | "dropped_undeliverable", n)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, batch: Batch) -> None:
        """Queue one served batch without blocking; when it does not fit, drop it and count its records."""
        n = len(batch)
        with self._lock:
            fits = self.queued + n <= self.queue_size
            if fits:
                self.queued += n
        if not fits:
            self.count("dropped_queue_full", n)
            return
        self.queue.put(batch)

    def _take(self) -> list[dict]:
        """Records of the queued batches, until ``batch_size`` records or ``flush_seconds`` have passed."""
        records: list[dict] = []
        deadline = time.monotonic() + self.flush_seconds
        while len(records) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch = self.queue.get(timeout=remaining)
            except queue.Empty:
                break
            with self._lock:
                self.queued -= len(batch)
            records.extend(batch.records() if isinstance(batch, ServedBatch) else batch)
        return records

    def _send(self, client: httpx.Client, batch: list[dict]) -> None:
        body = to_json({"records": batch})  # pydantic-core's encoder: far cheaper than json.dumps here
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
                    return
                if 400 <= response.status_code < 500:  # the records are bad: retrying won't help
                    log.error("monitor rejected %d records: %s", len(batch), response.text[:300])
                    break
            except httpx.HTTPError as exc:
                log.debug("monitor unreachable (%s), attempt %d", exc, attempt + 1)
        self.count("dropped_undeliverable", len(batch))
        log.warning("dropped %d records the monitor could not take (%s)", len(batch), self.url)

    def run(self) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set() or not self.queue.empty():
                records = self._take()
                # A served batch can be larger than batch_size: POST at most batch_size records at a time.
                for start in range(0, len(records), self.batch_size):
                    self._send(client, records[start : start + self.batch_size])
                if self._stop.is_set() and self.queue.empty():
                    break

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="monitor-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
