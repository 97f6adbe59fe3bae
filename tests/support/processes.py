"""Free ports, waiting on a condition, and processes started and stopped as a whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import psutil

from sandbox.names import REPO_ROOT


def free_port() -> int:
    """A 127.0.0.1 port nobody listens on now (bound, then released: nothing must listen there)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dead_pid() -> int:
    """The pid of a process that has ended (a spool directory named by it belongs to nobody)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(child.stdout)


def tail(path: Path, lines: int = 40) -> str:
    """The end of a log file, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 60,
    interval: float = 0.5,
    process: subprocess.Popen | None = None,
) -> bool:
    """True as soon as ``predicate()`` is true; False after ``timeout`` s, or once ``process`` exited.

    An HTTP error counts as "not yet": the server polled may still be starting.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if predicate():
                return True
        if process is not None and process.poll() is not None:
            return False
        time.sleep(interval)
    return False


def wait_http(
    url: str, timeout: float = 90, process: subprocess.Popen | None = None, log_path: Path | None = None
) -> float:
    """Seconds until ``GET url`` answers 200; else an error naming the URL, why, and the log's tail."""
    started = time.monotonic()
    if wait_until(lambda: httpx.get(url, timeout=2).status_code == 200, timeout, process=process):
        return time.monotonic() - started
    if process is not None and process.poll() is not None:
        why = f"its process exited with {process.returncode}"
    else:
        why = f"no 200 within {timeout:.0f}s"
    raise TimeoutError(f"{url}: {why}" + (f"\n{tail(log_path)}" if log_path else ""))


def start_process_group(
    command: list[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | str = REPO_ROOT,
    append: bool = False,
) -> subprocess.Popen:
    """``command`` in a session of its own (= its own process group), output to ``log_path``.

    ``env`` is added to this process's environment; ``cwd`` is the repository (``uvicorn app:...``
    and ``python -c`` import the project from there). Its own group, so that stop_process_group
    stops what it started too (uvicorn, BentoML and MLflow start workers).
    """
    with log_path.open("a" if append else "w") as log:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_process_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process's group, then SIGKILL the group and any descendant that left it."""
    descendants: list[psutil.Process] = []
    if proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()
