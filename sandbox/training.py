"""Start ``train-and-register`` embedded: check the inputs first, then follow the steps as they run."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pipelines.data import SOURCES, DataError, load_csv
from pipelines.features import schema_for_source
from pipelines.run import PipelineError, run_in_child
from pipelines.scenarios import check_scenario
from pipelines.train import DEFAULT_HYPERPARAMS
from pipelines.validate import check_frame
from sandbox.settings import Settings

TrainingError = PipelineError  # what the CLI catches: a step failed, the message says which


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
    trigger_info: dict = field(default_factory=dict)  # tagged on the MLflow run as trigger.<key>
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
            "trigger_info": json.dumps(self.trigger_info),
            "monitor_url": settings.monitor_url,
            "reference_rows": settings.retrain_reference_rows,
            "min_production_rows": settings.retrain_min_production_rows,
            "window_rows": settings.retrain_window_rows,
            **DEFAULT_HYPERPARAMS,
            **self.hyperparams,
        }


def check_request(request: TrainRequest) -> None:
    """Bad parameters fail here, before any step runs, with a message that names the problem."""
    if request.n_rows <= 0:
        raise DataError(f"--n-rows must be positive, got {request.n_rows}")
    if request.source not in (*SOURCES, "production"):
        raise DataError(f"unknown source {request.source!r}; choose one of {', '.join(SOURCES)}, production")
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
    """Check the request, then run the pipeline via kfp.local in a child process (``run_in_child``)."""
    check_request(request)
    check_mlflow(settings)
    log_path = settings.logs_dir / f"train-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    return run_in_child(request.arguments(settings), settings.kfp_root, log_path, on_step)
