"""Start ``train-and-register`` embedded: check the inputs first, then follow the steps as they run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pipelines.data import SOURCES, DataError, load_csv
from pipelines.features import schema_for_source
from pipelines.run import RESULT_MARKER
from pipelines.scenarios import check_scenario
from pipelines.train import DEFAULT_HYPERPARAMS
from pipelines.validate import check_frame
from sandbox.settings import Settings

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - INFO - Executing task '([\w-]+)'")
FINISHED = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - \w+ - Task '([\w-]+)' finished with status (\w+)")
ERROR_LINE = re.compile(r"^\s*([\w.]*(?:Error|Exception)): (.+)$")


class TrainingError(RuntimeError):
    pass


@dataclass
class TrainRequest:
    source: str = "synthetic"
    scenario: str = "none"
    severity: float = 1.0
    n_rows: int = 20_000
    seed: int = 0
    csv_path: str = ""
    hyperparams: dict = field(default_factory=dict)
    trigger: str = "manual"
    model_name: str | None = None

    def arguments(self, settings: Settings) -> dict:
        model_name = self.model_name or (
            "breast-cancer" if self.source == "breast_cancer" else settings.model_name
        )
        return {
            "mlflow_uri": settings.mlflow_uri,
            "model_name": model_name,
            "experiment": settings.experiment,
            "source": self.source,
            "scenario": self.scenario,
            "severity": self.severity,
            "n_rows": self.n_rows,
            "seed": self.seed,
            "csv_path": str(Path(self.csv_path).resolve()) if self.csv_path else "",
            "gate_metric": settings.gate_metric,
            "min_score": settings.gate_min_score,
            "tolerance": settings.gate_tolerance,
            "trigger": self.trigger,
            **DEFAULT_HYPERPARAMS,
            **self.hyperparams,
        }


def check_request(request: TrainRequest) -> None:
    """Bad parameters fail here, before any step runs, with a message that names the problem."""
    if request.n_rows <= 0:
        raise DataError(f"--n-rows must be positive, got {request.n_rows}")
    if request.source not in SOURCES:
        raise DataError(f"unknown source {request.source!r}; choose one of {', '.join(SOURCES)}")
    check_scenario(request.scenario, request.severity)
    if request.source == "breast_cancer" and request.scenario != "none":
        raise DataError("drift scenarios apply to the loan schema; use --scenario none with breast_cancer")
    if request.source == "csv":
        if not request.csv_path:
            raise DataError("--source csv needs --csv-path PATH")
        report = check_frame(load_csv(request.csv_path), schema_for_source("csv"))
        if not report.ok:
            raise DataError(f"{request.csv_path} does not fit the loan schema: " + "; ".join(report.errors))


def check_mlflow(settings: Settings) -> None:
    try:
        resp = httpx.get(settings.mlflow_uri.rstrip("/") + "/health", timeout=3)
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        raise TrainingError(
            f"MLflow is not reachable at {settings.mlflow_uri} ({type(exc).__name__}); "
            "start the stack with `sandbox up --local` (or `make local`)"
        ) from exc


def run_embedded(
    request: TrainRequest,
    settings: Settings,
    on_step: Callable[[str, str, float], None] = lambda step, state, seconds: None,
) -> dict:
    """Run the pipeline via kfp.local in a child process; ``on_step(step, state, seconds)`` follows it.

    Returns the gate's result plus ``step_seconds`` and ``log``.
    """
    check_request(request)
    check_mlflow(settings)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.logs_dir / f"train-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    command = [
        sys.executable, "-m", "pipelines.run",
        json.dumps(request.arguments(settings)), str(settings.kfp_root),
    ]  # fmt: skip
    started: dict[str, float] = {}
    states: dict[str, str] = {}
    step_seconds: dict[str, float] = {}
    result, error = None, None
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc,
    ):
        for raw in proc.stdout:
            log.write(raw)
            line = ANSI.sub("", raw.rstrip("\n"))
            if line.startswith(RESULT_MARKER):
                result = json.loads(line[len(RESULT_MARKER) :])
            elif match := STARTED.match(line):
                started[match[2]] = time.monotonic()
                states[match[2]] = "running"
                on_step(match[2], "running", 0.0)
            elif match := FINISHED.match(line):
                step = match[2]
                step_seconds[step] = round(time.monotonic() - started.get(step, time.monotonic()), 2)
                states[step] = match[3].lower()
                on_step(step, match[3].lower(), step_seconds[step])
            elif (match := ERROR_LINE.match(line)) and error is None:  # the step's own error, not the wrap-up
                error = f"{match[1].rsplit('.', 1)[-1]}: {match[2]}"
    if proc.returncode != 0 or result is None:
        failed = next((step for step, state in states.items() if state != "success"), "pipeline")
        raise TrainingError(f"step {failed!r} failed: {error or 'see the log'} (full log: {log_path})")
    return {**result, "step_seconds": step_seconds, "log": str(log_path)}
