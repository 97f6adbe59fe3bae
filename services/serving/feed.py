"""Serving -> monitor feed: predictions never wait for it and never fail because of it.

``submit`` only puts records on a bounded queue (dropping, and counting, when it
is full). A sender thread batches them and POSTs to the monitor's ``/ingest``,
retrying with exponential backoff; a batch that still cannot be delivered is
counted as dropped. Nothing is lost silently: sent + dropped + queued = submitted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import httpx

log = logging.getLogger("sandbox.serving.feed")


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
        self.queue: queue.Queue[dict] = queue.Queue(maxsize=queue_size)
        self.batch_size, self.flush_seconds = batch_size, flush_seconds
        self.max_retries, self.timeout = max_retries, timeout
        self.count = count  # count("sent" | "retried" | "dropped_queue_full" | "dropped_undeliverable", n)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, records: list[dict]) -> None:
        for i, record in enumerate(records):
            try:
                self.queue.put_nowait(record)
            except queue.Full:
                self.count("dropped_queue_full", len(records) - i)
                return

    def _take_batch(self) -> list[dict]:
        batch: list[dict] = []
        deadline = time.monotonic() + self.flush_seconds
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self.queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _send(self, client: httpx.Client, batch: list[dict]) -> None:
        delay = 0.2
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.count("retried", len(batch))
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, 5.0)
            try:
                response = client.post(self.url, json={"records": batch}, timeout=self.timeout)
                if response.status_code < 300:
                    self.count("sent", len(batch))
                    return
                if (
                    400 <= response.status_code < 500
                ):  # the monitor says the records are bad: retrying won't help
                    log.error("monitor rejected %d records: %s", len(batch), response.text[:300])
                    break
            except httpx.HTTPError as exc:
                log.debug("monitor unreachable (%s), attempt %d", exc, attempt + 1)
        self.count("dropped_undeliverable", len(batch))
        log.warning("dropped %d records the monitor could not take (%s)", len(batch), self.url)

    def run(self) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set() or not self.queue.empty():
                batch = self._take_batch()
                if batch:
                    self._send(client, batch)
                if self._stop.is_set() and self.queue.empty():
                    break

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="monitor-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
