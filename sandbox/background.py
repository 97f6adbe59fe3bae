"""Background parts of a story (traffic, labels) that report their own death at once.

A thread that dies with an exception would otherwise leave its waiting caller polling for a
signal that can no longer come (a demo once waited 325 s for drift to fall on traffic that had
stopped). ``check()`` is called on every poll of the caller: it raises the moment the part died,
stopped early, or stopped making progress.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable

log = logging.getLogger("sandbox.background")


class BackgroundDied(RuntimeError):
    """A background part stopped; the message names it and its error."""


class Background:
    def __init__(self, name: str, target: Callable[[Background], object], stall_seconds: float = 60.0):
        self.name, self.target, self.stall_seconds = name, target, stall_seconds
        self.result: object = None
        self.error: str | None = None
        self.finished = threading.Event()
        self.last_progress = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Background:
        self.thread.start()
        return self

    def progress(self, *_: object) -> None:
        """Called by the target whenever it makes progress (a stall is judged from the last call)."""
        self.last_progress = time.monotonic()

    def _run(self) -> None:
        try:
            self.result = self.target(self)
        except BaseException as exc:  # reported, never swallowed: the caller's next check() raises it
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("%s died: %s\n%s", self.name, self.error, traceback.format_exc())
        finally:
            self.finished.set()

    def check(self, expect_running: bool = True) -> None:
        """Raise :class:`BackgroundDied` if the part died, ended while it should run, or stalled."""
        if self.error is not None:
            raise BackgroundDied(f"{self.name} died: {self.error}")
        if expect_running and self.finished.is_set():
            raise BackgroundDied(f"{self.name} ended early")
        stalled = time.monotonic() - self.last_progress
        if expect_running and stalled > self.stall_seconds:
            raise BackgroundDied(f"{self.name} made no progress for {stalled:.0f}s")

    def join(self, timeout: float) -> object:
        self.finished.wait(timeout)
        return self.result
