"""The feed's outbox: encoded ``/ingest`` bodies waiting for the monitor, oldest first.

Bodies wait in memory up to ``memory_bytes``; past that, and until the disk part has drained, they
wait as files in ``directory`` up to ``disk_bytes`` (so the order stays first in, first out). A monitor
slower than serving (on 2 shared cores it stores ~7,000 records/s while serving answers ~18,000
rows/s) or down for minutes then delays records instead of losing them. ``put`` refuses a body only
when both parts are full (the feed counts its records as dropped).

One producer and one consumer: ``head`` gives the oldest body without removing it, ``done`` removes
it once the monitor took it (or refused it for good), so a body is never lost between the two.
``close`` writes what is still in memory to disk. Each process spools in a directory of its own
(``<directory>/<pid>``) and, when it starts, adopts the files of processes that are gone: the
records of a serving worker that stopped (or was killed) with a backlog go out with the next one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("sandbox.serving.feed")


@dataclass(frozen=True, slots=True)
class Body:
    data: bytes
    records: int
    rejected: int  # refused requests whose sample rides in this body
    created_ns: int
    path: Path | None = None  # on disk, else in memory

    @property
    def filename(self) -> str:
        return f"{self.created_ns:020d}-{self.records}-{self.rejected}.json"

    @classmethod
    def from_file(cls, path: Path) -> Body:
        created, records, rejected = (int(part) for part in path.stem.split("-"))
        return cls(b"", records, rejected, created, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    return True


class Outbox:
    def __init__(self, memory_bytes: int, directory: Path | None = None, disk_bytes: int = 0):
        self.memory_bytes, self.disk_bytes = memory_bytes, disk_bytes if directory else 0
        self._memory: deque[Body] = deque()
        self._files: deque[Body] = deque()  # on disk, oldest first (data not loaded)
        self.memory_used = self.disk_used = 0
        self._records = 0
        self._changed = threading.Condition()
        self.directory = None
        if directory is not None and disk_bytes > 0:
            self.directory = self._own_directory(Path(directory))

    def _own_directory(self, root: Path) -> Path | None:
        own = root / str(os.getpid())
        try:
            own.mkdir(parents=True, exist_ok=True)
            adopted = 0
            for other in root.iterdir():
                if other != own and other.is_dir() and other.name.isdigit() and not _alive(int(other.name)):
                    for path in other.glob("*.json"):
                        path.rename(own / path.name)
                        adopted += 1
                    other.rmdir()
        except OSError as exc:
            log.warning("feed spool %s not usable (%s): records wait in memory only", root, exc)
            return None
        for path in sorted(own.glob("*.json")):  # an earlier process's (this pid, or adopted)
            body = Body.from_file(path)
            self._files.append(body)
            self.disk_used += path.stat().st_size
            self._records += body.records
        if self._files:
            log.info(
                "feed spool %s: %d bodies (%d records) from earlier processes, %d adopted",
                own, len(self._files), self._records, adopted,
            )  # fmt: skip
        return own

    @property
    def records(self) -> int:
        """Records waiting, in memory and on disk."""
        return self._records

    def put(self, data: bytes, records: int, rejected: int = 0) -> Body | None:
        """Queue a body: as queued (``path`` set when it waits on disk), or None when neither memory
        nor disk has room for it (the caller drops it)."""
        body = Body(data, records, rejected, time.time_ns())
        with self._changed:
            if not self._files and self.memory_used + len(data) <= self.memory_bytes:
                self._memory.append(body)
                self.memory_used += len(data)
            elif (body := self._spill(body)) is not None:
                self._files.append(body)
            else:
                return None
            self._records += records
            self._changed.notify()
        return body

    def _spill(self, body: Body) -> Body | None:
        """``body`` written to the spool (counted in ``disk_used``), or None when it has no room."""
        if self.directory is None or self.disk_used + len(body.data) > self.disk_bytes:
            return None
        path = self.directory / body.filename
        temp = path.with_suffix(".part")  # never a half-written body under a .json name
        temp.write_bytes(body.data)
        temp.rename(path)
        self.disk_used += len(body.data)
        return Body(b"", body.records, body.rejected, body.created_ns, path)

    def head(self, timeout: float) -> Body | None:
        """The oldest body (its data read from disk if it waits there), or None after ``timeout``."""
        with self._changed:
            if not self._memory and not self._files:
                self._changed.wait(timeout)
            if self._memory:
                return self._memory[0]
            if not self._files:
                return None
            body = self._files[0]
        return Body(body.path.read_bytes(), body.records, body.rejected, body.created_ns, body.path)

    def done(self, body: Body) -> None:
        """Remove ``body``, the one ``head`` gave."""
        with self._changed:
            if body.path is None:
                self._memory.popleft()
                self.memory_used -= len(body.data)
            else:
                self._files.popleft()
                self.disk_used -= len(body.data)
            self._records -= body.records
        if body.path is not None:
            body.path.unlink(missing_ok=True)

    def close(self) -> int:
        """Write the bodies still in memory to disk, before the files (they are older); returns the
        records that had no room there and are lost with the process."""
        with self._changed:
            lost = 0
            written: list[Body] = []
            while self._memory:
                body = self._memory.popleft()
                self.memory_used -= len(body.data)
                if (spilled := self._spill(body)) is not None:
                    written.append(spilled)
                else:
                    lost += body.records
                    self._records -= body.records
            self._files.extendleft(reversed(written))
        return lost
