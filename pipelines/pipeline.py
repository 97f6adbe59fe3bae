"""The ``train-and-register`` pipeline: load -> validate -> train -> evaluate -> register -> promote.

Its parameters are :class:`pipelines.params.TrainParams` (plus ``params_json``): the signature is
made from that one list, so the pipeline, the CLI and both runners cannot disagree on a default.
"""

from types import SimpleNamespace

from kfp import dsl

from pipelines import components as c
from pipelines.params import pipeline_signature

PIPELINE_NAME = "train-and-register"
STEPS = ("load-data", "validate-data", "train", "evaluate", "register", "promote")
SIGNATURE = pipeline_signature(return_annotation=str)


def _train_and_register(*values):
    # KFP calls the pipeline function with one channel per parameter, in the signature's order.
    p = SimpleNamespace(**dict(zip(SIGNATURE.parameters, values, strict=True)))
    data = c.load_data(
        source=p.source,
        scenario=p.scenario,
        severity=p.severity,
        n_rows=p.n_rows,
        seed=p.seed,
        csv_path=p.csv_path,
        monitor_url=p.monitor_url,
        clean_rows=p.clean_rows,
        min_production_rows=p.min_production_rows,
        drift_reference_rows=p.drift_reference_rows,
        drift_reference_since=p.drift_reference_since,
    ).set_display_name("load-data")
    split = c.validate_data(data=data.outputs["data"], source=p.source, seed=p.seed).set_display_name(
        "validate-data"
    )
    model = c.train(
        train_data=split.outputs["train_data"],
        source=p.source,
        learning_rate=p.learning_rate,
        max_iter=p.max_iter,
        max_depth=p.max_depth,
        min_samples_leaf=p.min_samples_leaf,
    ).set_display_name("train")
    scores = c.evaluate(
        model=model.outputs["model"], holdout_data=split.outputs["holdout_data"], source=p.source
    ).set_display_name("evaluate")
    registered = c.register(
        model=model.outputs["model"],
        train_data=split.outputs["train_data"],
        reference_data=data.outputs["reference"],
        metrics=scores.outputs["metrics"],
        mlflow_uri=p.mlflow_uri,
        model_name=p.model_name,
        experiment=p.experiment,
        params_json=p.params_json,
        source=p.source,
        trigger=p.trigger,
        trigger_info=p.trigger_info,
    ).set_display_name("register")
    decision = c.promote(
        version=registered.outputs["version"],
        holdout_data=split.outputs["holdout_data"],
        mlflow_uri=p.mlflow_uri,
        model_name=p.model_name,
        source=p.source,
        gate_metric=p.gate_metric,
        min_score=p.min_score,
        tolerance=p.tolerance,
        slice_tolerance=p.slice_tolerance,
    ).set_display_name("promote")
    return decision.output


_train_and_register.__signature__ = SIGNATURE
_train_and_register.__name__ = "train_and_register"
train_and_register = dsl.pipeline(
    name=PIPELINE_NAME, description="Train a model, register it in MLflow, gate its promotion."
)(_train_and_register)
