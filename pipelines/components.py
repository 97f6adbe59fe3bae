"""KFP components: thin wrappers that move artifacts between the plain functions.
# (No `from __future__ import annotations`: KFP reads the real annotation objects.)

Each component imports project code inside its body: in the cluster it runs in
the project image (``base_image``), locally in this venv (kfp.local, no venv).
"""

import os
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

# The one project image (built by `make up`); every component runs in it on the cluster.
PROJECT_IMAGE = os.environ.get("SANDBOX_IMAGE", "mlops-sandbox:0.1.0")

# Nothing to pip-install at run time: the image (or the local venv) already has the project.
component = dsl.component(base_image=PROJECT_IMAGE, packages_to_install=[], install_kfp_package=False)


@component
def load_data(
    data: Output[Dataset],
    reference: Output[Dataset],
    source: str = "synthetic",
    scenario: str = "none",
    severity: float = 1.0,
    n_rows: int = 20000,
    seed: int = 0,
    csv_path: str = "",
    monitor_url: str = "",
    reference_rows: int = 2000,
    min_production_rows: int = 200,
    window_rows: int = 2000,
    reference_since: float = 0.0,
):
    from pipelines.data import load_data as load
    from pipelines.production import production_data
    from pipelines.scenarios import apply_scenario

    if source == "production":  # the retrainer: the monitor's records, by the mix rule in production.py
        frame, drift_reference = production_data(
            monitor_url, n_rows, min_production_rows, reference_rows, window_rows, seed, since=reference_since
        )
    else:
        frame = apply_scenario(load(source, n_rows, seed, csv_path), scenario, severity, seed)
        drift_reference = frame
    frame.to_parquet(data.path, index=False)
    drift_reference.to_parquet(reference.path, index=False)
    data.metadata.update({"rows": len(frame), "source": source, "scenario": scenario})
    reference.metadata["rows"] = len(drift_reference)


@component
def validate_data(
    data: Input[Dataset],
    train_data: Output[Dataset],
    holdout_data: Output[Dataset],
    source: str = "synthetic",
    holdout_fraction: float = 0.25,
    seed: int = 0,
):
    import pandas as pd

    from pipelines.features import schema_for_source
    from pipelines.train import split
    from pipelines.validate import validate_frame

    schema = schema_for_source(source)
    frame = pd.read_parquet(data.path)
    report = validate_frame(frame, schema)
    for warning in report.warnings:
        print(f"validation warning: {warning}")
    train, holdout = split(frame, schema, holdout_fraction, seed)
    train.to_parquet(train_data.path, index=False)
    holdout.to_parquet(holdout_data.path, index=False)
    train_data.metadata["rows"] = len(train)
    holdout_data.metadata["rows"] = len(holdout)


@component
def train(
    train_data: Input[Dataset],
    model: Output[Model],
    source: str = "synthetic",
    learning_rate: float = 0.1,
    max_iter: int = 200,
    max_depth: int = 6,
    min_samples_leaf: int = 20,
):
    import joblib
    import pandas as pd

    from pipelines.features import schema_for_source
    from pipelines.train import train_model

    fitted = train_model(
        pd.read_parquet(train_data.path),
        schema_for_source(source),
        learning_rate=learning_rate,
        max_iter=max_iter,
        max_depth=max_depth,
        min_samples_leaf=min_samples_leaf,
    )
    joblib.dump(fitted, model.path)
    model.metadata["framework"] = "scikit-learn"


@component
def evaluate(
    model: Input[Model], holdout_data: Input[Dataset], metrics: Output[Metrics], source: str = "synthetic"
):
    import json

    import joblib
    import pandas as pd

    from pipelines.evaluate import evaluate_model
    from pipelines.features import schema_for_source

    scores = evaluate_model(
        joblib.load(model.path), pd.read_parquet(holdout_data.path), schema_for_source(source)
    )
    for name, value in scores.items():
        metrics.log_metric(name, value)
    # Also as a file: downstream steps read the numbers from the artifact itself.
    with open(metrics.path, "w") as fh:
        json.dump(scores, fh)


@component
def register(
    model: Input[Model],
    train_data: Input[Dataset],
    reference_data: Input[Dataset],
    metrics: Input[Metrics],
    mlflow_uri: str,
    model_name: str,
    experiment: str,
    params_json: str,
    source: str = "synthetic",
    trigger: str = "manual",
    trigger_info: str = "{}",
) -> NamedTuple("Registered", run_id=str, version=str):
    import json
    from collections import namedtuple

    import joblib
    import pandas as pd

    from pipelines.features import schema_for_source
    from pipelines.registry import log_and_register

    with open(metrics.path) as fh:
        scores = json.load(fh)
    run_id, version = log_and_register(
        mlflow_uri,
        joblib.load(model.path),
        schema_for_source(source),
        pd.read_parquet(train_data.path),
        params=json.loads(params_json),
        metrics=scores,
        model_name=model_name,
        experiment=experiment,
        tags={
            "trigger": trigger,
            "source": source,
            **{f"trigger.{key}": str(value) for key, value in json.loads(trigger_info).items()},
        },
        reference_frame=pd.read_parquet(reference_data.path),
    )
    return namedtuple("Registered", ["run_id", "version"])(run_id, version)


@component
def promote(
    version: str,
    holdout_data: Input[Dataset],
    mlflow_uri: str,
    model_name: str,
    source: str = "synthetic",
    gate_metric: str = "roc_auc",
    min_score: float = 0.7,
    tolerance: float = 0.01,
) -> str:
    import json

    import pandas as pd

    from pipelines.features import schema_for_source
    from pipelines.registry import promote as gate

    result = gate(
        mlflow_uri,
        model_name,
        version,
        pd.read_parquet(holdout_data.path),
        schema_for_source(source),
        min_score=min_score,
        tolerance=tolerance,
        metric=gate_metric,
    )
    print(f"gate: {'promoted' if result['promoted'] else 'rejected'} v{version}: {result['reason']}")
    return json.dumps(result)
