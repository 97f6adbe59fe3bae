"""Start ``train-and-register`` from the control plane: check the inputs first, then run it where it runs.

Where it runs is the runner's business (``pipelines.runners``): kfp.local on this machine, or the
KFP API of the kind cluster (``--kind``). Both take the same :class:`TrainParams` and give the same
:class:`TrainResult`.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from pipelines.data import SOURCES, DataError, load_csv
from pipelines.features import schema_for_source
from pipelines.params import TrainParams
from pipelines.result import TrainResult
from pipelines.runners import OnStep, no_step, runner_for
from pipelines.scenarios import check_scenario
from pipelines.validate import check_frame
from sandbox.settings import Settings

KIND_TRAIN_TIMEOUT = 1800.0  # a first run on a fresh cluster pulls the images of every step
SOURCE_CHOICES = (*SOURCES, "production")


def train_params(settings: Settings, **overrides) -> TrainParams:
    """The run the settings describe, with ``overrides`` (a CSV path resolved; the breast-cancer model named)."""
    if overrides.get("source") == "breast_cancer":
        overrides.setdefault("model_name", "breast-cancer")
    if overrides.get("csv_path"):
        overrides["csv_path"] = str(Path(overrides["csv_path"]).resolve())
    return TrainParams.from_settings(settings, **overrides)


def check_params(params: TrainParams, on_cluster: bool = False) -> None:
    """Bad parameters fail here, before any step runs, with a message that names the problem."""
    if params.n_rows <= 0:
        raise DataError(f"--n-rows must be positive, got {params.n_rows}")
    if params.source not in SOURCE_CHOICES:
        raise DataError(f"unknown source {params.source!r}; choose one of {', '.join(SOURCE_CHOICES)}")
    check_scenario(params.scenario, params.severity)
    if params.source == "breast_cancer" and params.scenario != "none":
        raise DataError("drift scenarios apply to the loan schema; use --scenario none with breast_cancer")
    if params.source == "csv":
        if on_cluster:
            raise DataError(
                "--source csv reads a file on this machine, which the cluster's pods cannot see; "
                "use --source synthetic or breast_cancer with --kind"
            )
        if not params.csv_path:
            raise DataError("--source csv needs --csv-path PATH")
        report = check_frame(load_csv(params.csv_path), schema_for_source("csv"))
        if not report.ok:
            raise DataError(f"{params.csv_path} does not fit the loan schema: " + "; ".join(report.errors))


def check_mlflow(settings: Settings, on_cluster: bool = False) -> None:
    try:
        httpx.get(settings.mlflow_uri.rstrip("/") + "/health", timeout=3).raise_for_status()
    except httpx.HTTPError as exc:
        fix = (
            "is the cluster up? `sandbox status --kind`, `make up`"
            if on_cluster
            else "start the stack with `sandbox up --local` (or `make local`)"
        )
        raise DataError(
            f"MLflow is not reachable at {settings.mlflow_uri} ({type(exc).__name__}); {fix}"
        ) from exc


def on_cluster_settings(settings: Settings) -> Settings:
    """The settings of a run submitted from this machine to the kind cluster's KFP API."""
    from pipelines.remote import DEFAULT_KFP_HOST

    return settings.model_copy(update={"kfp_host": settings.kfp_host or DEFAULT_KFP_HOST})


def train(
    params: TrainParams,
    settings: Settings,
    on_step: OnStep = no_step,
    on_cluster: bool = False,
    on_submitted=None,
) -> TrainResult:
    """Check the parameters and MLflow, then run the pipeline: embedded, or on the cluster's KFP API."""
    check_params(params, on_cluster)
    check_mlflow(settings, on_cluster)
    if on_cluster:
        runner = runner_for(
            on_cluster_settings(settings), KIND_TRAIN_TIMEOUT, from_host=True, on_submitted=on_submitted
        )
    else:
        runner = runner_for(settings)
    return runner.run(params, on_step)
