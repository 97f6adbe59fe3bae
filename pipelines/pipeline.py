"""The ``train-and-register`` pipeline: load -> validate -> train -> evaluate -> register -> promote."""

import json

from kfp import dsl

from pipelines import components as c

PIPELINE_NAME = "train-and-register"


@dsl.pipeline(name=PIPELINE_NAME, description="Train a model, register it in MLflow, gate its promotion.")
def train_and_register(
    mlflow_uri: str,
    model_name: str = "loan-default",
    experiment: str = "train-and-register",
    source: str = "synthetic",
    scenario: str = "none",
    severity: float = 1.0,
    n_rows: int = 20000,
    seed: int = 0,
    csv_path: str = "",
    learning_rate: float = 0.1,
    max_iter: int = 200,
    max_depth: int = 6,
    min_samples_leaf: int = 20,
    gate_metric: str = "roc_auc",
    min_score: float = 0.7,
    tolerance: float = 0.01,
    trigger: str = "manual",
    trigger_info: str = "{}",
    monitor_url: str = "",
    reference_rows: int = 2000,
    min_production_rows: int = 200,
    window_rows: int = 2000,
    reference_since: float = 0.0,
    params_json: str = "{}",
) -> str:
    data = c.load_data(
        source=source,
        scenario=scenario,
        severity=severity,
        n_rows=n_rows,
        seed=seed,
        csv_path=csv_path,
        monitor_url=monitor_url,
        reference_rows=reference_rows,
        min_production_rows=min_production_rows,
        window_rows=window_rows,
        reference_since=reference_since,
    ).set_display_name("load-data")
    split = c.validate_data(data=data.outputs["data"], source=source, seed=seed).set_display_name(
        "validate-data"
    )
    model = c.train(
        train_data=split.outputs["train_data"],
        source=source,
        learning_rate=learning_rate,
        max_iter=max_iter,
        max_depth=max_depth,
        min_samples_leaf=min_samples_leaf,
    ).set_display_name("train")
    scores = c.evaluate(
        model=model.outputs["model"], holdout_data=split.outputs["holdout_data"], source=source
    ).set_display_name("evaluate")
    registered = c.register(
        model=model.outputs["model"],
        train_data=split.outputs["train_data"],
        reference_data=data.outputs["reference"],
        metrics=scores.outputs["metrics"],
        mlflow_uri=mlflow_uri,
        model_name=model_name,
        experiment=experiment,
        params_json=params_json,
        source=source,
        trigger=trigger,
        trigger_info=trigger_info,
    ).set_display_name("register")
    decision = c.promote(
        version=registered.outputs["version"],
        holdout_data=split.outputs["holdout_data"],
        mlflow_uri=mlflow_uri,
        model_name=model_name,
        source=source,
        gate_metric=gate_metric,
        min_score=min_score,
        tolerance=tolerance,
    ).set_display_name("promote")
    return decision.output


STEPS = ("load-data", "validate-data", "train", "evaluate", "register", "promote")


def params_record(arguments: dict) -> str:
    """The run's parameters as logged to MLflow (the registry sees what the pipeline was asked to do)."""
    keep = {k: v for k, v in arguments.items() if k not in ("mlflow_uri", "params_json", "trigger_info")}
    return json.dumps(keep, sort_keys=True)
