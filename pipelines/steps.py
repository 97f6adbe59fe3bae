"""The six steps of ``train-and-register`` as plain functions on frames, and their chain in one process.

Each KFP component (``pipelines/components.py``) is one of these plus artifact I/O; ``run_steps``
chains them in this process for the benchmarks and tests that want the steps without kfp.local.

Under kfp.local and on the cluster every step is a process of its own that pays for what it
imports, so each function imports what only it needs in its body: no scikit-learn in load-data and
validate-data, MLflow only in register and promote, the settings (``pipelines.params``) in none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pandas as pd

from pipelines.features import schema_for_source

if TYPE_CHECKING:
    from pipelines.params import TrainParams
    from pipelines.result import TrainResult

HOLDOUT_FRACTION = 0.25


def load_data(
    source: str, scenario: str, severity: float, n_rows: int, seed: int, csv_path: str = "",
    monitor_url: str = "", clean_rows: int = 0, min_production_rows: int = 0,
    drift_reference_rows: int = 0, drift_reference_since: float = 0.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """``(training rows, drift reference)``: a source with a scenario, or production by its mix rule."""
    from pipelines.data import load_data as load
    from pipelines.scenarios import apply_scenario

    if source == "production":  # the retrainer: the monitor's records, by the mix rule in production.py
        from pipelines.production import production_data  # (httpx: only this source needs it)

        return production_data(
            monitor_url, n_rows, min_production_rows, clean_rows, drift_reference_rows, seed,
            since=drift_reference_since,
        )  # fmt: skip
    frame = apply_scenario(load(source, n_rows, seed, csv_path), scenario, severity, seed)
    return frame, frame


def validate_and_split(
    frame: pd.DataFrame, source: str, seed: int, holdout_fraction: float = HOLDOUT_FRACTION
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from pipelines.train import split
    from pipelines.validate import validate_frame

    schema = schema_for_source(source)
    report = validate_frame(frame, schema)  # raises on a schema violation, naming it
    for warning in report.warnings:
        print(f"validation warning: {warning}")
    return split(frame, schema, holdout_fraction, seed)


def train(train_data: pd.DataFrame, source: str, **hyperparams):
    from pipelines.train import train_model

    return train_model(train_data, schema_for_source(source), **hyperparams)


def evaluate(model, holdout: pd.DataFrame, source: str) -> dict[str, float]:
    from pipelines.evaluate import evaluate_model

    return evaluate_model(model, holdout, schema_for_source(source))


def register(
    model, train_data: pd.DataFrame, drift_reference: pd.DataFrame, metrics: dict, mlflow_uri: str,
    model_name: str, experiment: str, params: dict, source: str, trigger: str, trigger_info: dict,
) -> tuple[str, str]:  # fmt: skip
    from pipelines.registry import log_and_register

    return log_and_register(
        mlflow_uri, model, schema_for_source(source), train_data, params=params, metrics=metrics,
        model_name=model_name, experiment=experiment,
        tags={"trigger": trigger, "source": source, **{f"trigger.{k}": str(v) for k, v in trigger_info.items()}},
        reference_frame=drift_reference,
    )  # fmt: skip


def promote(
    version: str, holdout: pd.DataFrame, mlflow_uri: str, model_name: str, source: str,
    gate_metric: str, min_score: float, tolerance: float,
) -> TrainResult:  # fmt: skip
    from pipelines.registry import promote as gate

    result = gate(
        mlflow_uri, model_name, version, holdout, schema_for_source(source),
        min_score=min_score, tolerance=tolerance, metric=gate_metric,
    )  # fmt: skip
    print(f"gate: {'promoted' if result.promoted else 'rejected'} v{version}: {result.reason}")
    return result


def run_steps(
    params: TrainParams, timed: Callable[[str, float], None] = lambda step, seconds: None
) -> TrainResult:
    """The whole chain in this process; ``timed(step, seconds)`` after each step (names as in KFP)."""
    import json

    from pipelines.params import logged_params

    def step(name: str, fn, *args, **kwargs):
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        timed(name, time.perf_counter() - started)
        return out

    p = params
    frame, drift_reference = step(
        "load-data", load_data, p.source, p.scenario, p.severity, p.n_rows, p.seed, p.csv_path, p.monitor_url,
        p.clean_rows, p.min_production_rows, p.drift_reference_rows, p.drift_reference_since,
    )  # fmt: skip
    train_data, holdout = step("validate-data", validate_and_split, frame, p.source, p.seed)
    model = step("train", train, train_data, p.source, **p.hyperparams)
    metrics = step("evaluate", evaluate, model, holdout, p.source)
    _, version = step(
        "register", register, model, train_data, drift_reference, metrics, p.mlflow_uri, p.model_name,
        p.experiment, logged_params(p.arguments()), p.source, p.trigger, json.loads(p.trigger_info),
    )  # fmt: skip
    return step(
        "promote", promote, version, holdout, p.mlflow_uri, p.model_name, p.source, p.gate_metric,
        p.min_score, p.tolerance,
    )  # fmt: skip
