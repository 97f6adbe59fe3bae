"""Serving -> monitor feed: predictions never wait for it and never fail because of it.

``submit`` appends one item per served batch to a queue bounded in records (a batch that does not
fit is dropped and its records counted), and does nothing else on the request path. The sender
thread wakes every ``flush_seconds``, or as soon as ``batch_size`` records wait (not once per
served batch: each wake-up takes the GIL from the request path). It takes everything queued,
builds the ``/ingest`` records there, POSTs them ``batch_size`` at a time, retrying with
exponential backoff; records that still cannot be delivered are counted as dropped. Nothing is
lost silently: sent + dropped + queued (+ in flight) = submitted.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
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
        batch_size: int = 2000,
        flush_seconds: float = 0.5,
        max_retries: int = 3,
        timeout: float = 2.0,
        count: Callable[[str, int], None] = lambda outcome, n: None,
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

    def _take(self) -> list[dict]:
        """After ``flush_seconds``, or once ``batch_size`` records wait: the records of every queued batch."""
        self._ready.wait(self.flush_seconds)
        self._ready.clear()
        with self._lock:
            batches, self.pending, self.queued = self.pending, deque(), 0
        records: list[dict] = []
        for batch in batches:
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
            while True:
                records = self._take()
                for start in range(0, len(records), self.batch_size):  # at most batch_size records a POST
                    self._send(client, records[start : start + self.batch_size])
                if self._stop.is_set() and not self.pending:
                    break

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="monitor-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._ready.set()
        if self._thread:
            self._thread.join(timeout)
