"""KFP components: each is one step of ``pipelines/steps.py`` plus the artifacts it reads and writes.
# (No `from __future__ import annotations`: KFP reads the real annotation objects.)

Each component imports project code inside its body: in the cluster it runs in the project image
(``base_image``), locally in this venv (kfp.local, no venv). Every input is given by the pipeline,
whose parameters and defaults are ``pipelines.params.TrainParams``: none is defaulted here.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from sandbox.names import IMAGE as PROJECT_IMAGE  # every component runs in it on the cluster

# Nothing to pip-install at run time: the image (or the local venv) already has the project.
component = dsl.component(base_image=PROJECT_IMAGE, packages_to_install=[], install_kfp_package=False)


@component
def load_data(
    data: Output[Dataset],
    reference: Output[Dataset],
    source: str,
    scenario: str,
    severity: float,
    n_rows: int,
    seed: int,
    csv_path: str,
    monitor_url: str,
    clean_rows: int,
    min_production_rows: int,
    drift_reference_rows: int,
    drift_reference_since: float,
):
    from pipelines import steps

    frame, drift_reference = steps.load_data(
        source, scenario, severity, n_rows, seed, csv_path, monitor_url, clean_rows, min_production_rows,
        drift_reference_rows, drift_reference_since,
    )  # fmt: skip
    frame.to_parquet(data.path, index=False)
    drift_reference.to_parquet(reference.path, index=False)
    data.metadata.update({"rows": len(frame), "source": source, "scenario": scenario})
    reference.metadata["rows"] = len(drift_reference)


@component
def validate_data(
    data: Input[Dataset],
    train_data: Output[Dataset],
    holdout_data: Output[Dataset],
    source: str,
    seed: int,
):
    import pandas as pd

    from pipelines import steps

    train, holdout = steps.validate_and_split(pd.read_parquet(data.path), source, seed)
    train.to_parquet(train_data.path, index=False)
    holdout.to_parquet(holdout_data.path, index=False)
    train_data.metadata["rows"] = len(train)
    holdout_data.metadata["rows"] = len(holdout)


@component
def train(
    train_data: Input[Dataset],
    model: Output[Model],
    source: str,
    learning_rate: float,
    max_iter: int,
    max_depth: int,
    min_samples_leaf: int,
):
    import joblib
    import pandas as pd

    from pipelines import steps

    fitted = steps.train(
        pd.read_parquet(train_data.path), source, learning_rate=learning_rate, max_iter=max_iter,
        max_depth=max_depth, min_samples_leaf=min_samples_leaf,
    )  # fmt: skip
    joblib.dump(fitted, model.path)
    model.metadata["framework"] = "scikit-learn"


@component
def evaluate(model: Input[Model], holdout_data: Input[Dataset], metrics: Output[Metrics], source: str):
    import json

    import joblib
    import pandas as pd

    from pipelines import steps

    scores = steps.evaluate(joblib.load(model.path), pd.read_parquet(holdout_data.path), source)
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
    source: str,
    trigger: str,
    trigger_info: str,
) -> NamedTuple("Registered", run_id=str, version=str):
    import json
    from collections import namedtuple

    import joblib
    import pandas as pd

    from pipelines import steps

    with open(metrics.path) as fh:
        scores = json.load(fh)
    run_id, version = steps.register(
        joblib.load(model.path), pd.read_parquet(train_data.path), pd.read_parquet(reference_data.path),
        scores, mlflow_uri, model_name, experiment, json.loads(params_json), source, trigger,
        json.loads(trigger_info),
    )  # fmt: skip
    return namedtuple("Registered", ["run_id", "version"])(run_id, version)


@component
def promote(
    version: str,
    holdout_data: Input[Dataset],
    mlflow_uri: str,
    model_name: str,
    source: str,
    gate_metric: str,
    min_score: float,
    tolerance: float,
    slice_tolerance: float,
) -> str:
    import json

    import pandas as pd

    from pipelines import steps

    result = steps.promote(
        version, pd.read_parquet(holdout_data.path), mlflow_uri, model_name, source, gate_metric,
        min_score, tolerance, slice_tolerance,
    )  # fmt: skip
    return json.dumps(result.to_dict())
