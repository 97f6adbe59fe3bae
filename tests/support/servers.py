"""The servers tests and benchmarks start: MLflow as the stack runs it, and `bentoml serve` of serving."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from sandbox.local_stack import BASE_ENV, mlflow_server_command, venv_bin
from sandbox.names import REPO_ROOT
from tests.support.processes import free_port, start_process_group, stop_process_group, wait_http


def start_mlflow(store: Path, port: int, log_path: Path | None = None) -> subprocess.Popen:
    """The stack's own MLflow command (SQLite + proxied artifacts in ``store``) on 127.0.0.1:``port``."""
    return start_process_group(
        mlflow_server_command("127.0.0.1", port, store),
        log_path or store / "mlflow-server.log",
        env=BASE_ENV,
        cwd=store,
    )


def running_mlflow(store: Path, timeout: float = 90) -> contextlib.AbstractContextManager[str]:
    """A real MLflow tracking server on a free port, healthy before its URL is given; stopped after."""
    port, log = free_port(), store / "mlflow-server.log"
    return running(start_mlflow(store, port, log), f"http://127.0.0.1:{port}", "/health", log, timeout)


def start_serving(port: int, env: Mapping[str, str], log_path: Path) -> subprocess.Popen:
    return start_process_group(
        [venv_bin("bentoml"), "serve", "services.serving.service:Serving", "--working-dir", str(REPO_ROOT),
         "--host", "127.0.0.1", "--port", str(port)],
        log_path,
        # A BENTOML_HOME of its own, as the stack gives serving: BentoML wipes its metrics dir at start.
        # A feed spool of its own: a worker adopts the spool of a gone one, and must not deliver another's.
        env={"BENTOML_DO_NOT_TRACK": "True", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
             "BENTOML_HOME": str(log_path.parent / "bentoml"),
             "SANDBOX_FEED_SPOOL_DIR": str(log_path.parent / "feed-spool"), **env},
    )  # fmt: skip


def served(
    env: Mapping[str, str], log_dir: Path, timeout: float = 180
) -> contextlib.AbstractContextManager[str]:
    """A `bentoml serve` on a free port, alive (``/livez``) before its URL is given; stopped after."""
    port, log = free_port(), log_dir / "serving.log"
    return running(start_serving(port, env, log), f"http://127.0.0.1:{port}", "/livez", log, timeout)


@contextlib.contextmanager
def running(
    proc: subprocess.Popen, url: str, health_path: str, log_path: Path, timeout: float
) -> Iterator[str]:
    """``url`` once ``url + health_path`` answers 200 (else an error with the log's tail); the
    process group is stopped after, whatever happened."""
    try:
        wait_http(url + health_path, timeout, process=proc, log_path=log_path)
        yield url
    finally:
        stop_process_group(proc)
