"""A small append-only journal: the last ``keep`` records in memory, every record on disk (JSON lines).

The retrainer keeps three: its retrainings (history), the retrainings it held for bad data, and the
notifications Alertmanager sent to the human receiver. A restart reads the last ``keep`` back.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from pathlib import Path


class Journal:
    def __init__(self, path: Path, keep: int = 50):
        self.path, self.lock = path, threading.Lock()
        self.items: deque[dict] = deque(maxlen=keep)
        if path.is_file():
            for line in path.read_text().splitlines()[-keep:]:
                try:
                    self.items.append(json.loads(line))
                except ValueError:  # a line cut short by a crash: skip it
                    continue

    def append(self, record: dict, show: bool = True) -> None:
        """Persist ``record``; ``show=False`` writes it for a restart to read, not for the status."""
        with self.lock:
            if show:
                self.items.append(record)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def newest_first(self, limit: int | None = None) -> list[dict]:
        with self.lock:
            items = list(self.items)[::-1]
        return items[:limit] if limit else items
