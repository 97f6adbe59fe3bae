"""Registry: log a trained model to MLflow, register a version, and the promotion gate.

Aliases, not the deprecated stages: a new version gets ``challenger``; the gate
moves ``champion`` to it only when it clears the absolute floor and is not worse
than the current champion on the same fresh holdout.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from pipelines.features import FeatureSchema
from pipelines.result import TrainResult
from pipelines.train import features_only

CHAMPION, CHALLENGER = "champion", "challenger"
REFERENCE_ARTIFACT = "reference/reference.parquet"
REFERENCE_ROWS = 5_000
# MLflow saves sklearn models with skops (no arbitrary pickle); these are the types our
# own HistGradientBoosting pipelines contain, written by us, so they are trusted.
SKOPS_TRUSTED_TYPES = ["numpy.dtype", "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    metric: str
    challenger_score: float
    champion_score: float | None
    min_score: float
    tolerance: float


def decide_promotion(
    challenger_score: float,
    champion_score: float | None,
    min_score: float,
    tolerance: float,
    metric: str = "roc_auc",
) -> GateDecision:
    """The gate, as a pure function: floor first, then no worse than the champion (within tolerance)."""
    args = dict(
        metric=metric,
        challenger_score=challenger_score,
        champion_score=champion_score,
        min_score=min_score,
        tolerance=tolerance,
    )
    if math.isnan(challenger_score) or challenger_score < min_score:
        return GateDecision(
            False, f"{metric} {challenger_score:.4f} is below the floor {min_score:.4f}", **args
        )
    if champion_score is None:
        return GateDecision(
            True, f"no champion yet; {metric} {challenger_score:.4f} clears the floor", **args
        )
    if challenger_score < champion_score - tolerance:
        return GateDecision(
            False,
            f"{metric} {challenger_score:.4f} is worse than the champion's {champion_score:.4f} "
            f"on the same holdout (tolerance {tolerance})",
            **args,
        )
    return GateDecision(
        True,
        f"{metric} {challenger_score:.4f} vs champion {champion_score:.4f} on the same holdout "
        f"(tolerance {tolerance})",
        **args,
    )


def pip_requirements() -> list[str]:
    """Explicit requirements: MLflow's inference of them imports the world and takes tens of seconds."""
    import numpy
    import sklearn

    return [
        f"scikit-learn=={sklearn.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={numpy.__version__}",
    ]


def log_and_register(
    tracking_uri: str,
    model,
    schema: FeatureSchema,
    train_frame: pd.DataFrame,
    params: dict,
    metrics: dict[str, float],
    model_name: str,
    experiment: str,
    tags: dict[str, str] | None = None,
    reference_frame: pd.DataFrame | None = None,
) -> tuple[str, str]:
    """One MLflow run with params, metrics, model (signature + input example) and the drift reference.

    The drift reference is a sample of ``reference_frame`` (default: the training rows).

    Returns ``(run_id, version)``; the new version carries the ``challenger`` alias.
    """
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    x = features_only(train_frame, schema)
    example = x.head(5)
    signature = infer_signature(example, model.predict_proba(example)[:, 1])
    reference_frame = train_frame if reference_frame is None else reference_frame
    reference = reference_frame.sample(n=min(REFERENCE_ROWS, len(reference_frame)), random_state=0)
    with mlflow.start_run(tags={"schema": schema.name, **(tags or {})}) as run:
        mlflow.log_params(params)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
            reference.to_parquet(path, index=False)
            mlflow.log_artifact(str(path), artifact_path=str(Path(REFERENCE_ARTIFACT).parent))
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
            registered_model_name=model_name,
        )
        # After the model, tied to it in one request: metrics logged before log_model are copied
        # onto the logged model by one metric-history request each (~20 requests here).
        mlflow.log_metrics(metrics, model_id=info.model_id)
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri)
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    return run.info.run_id, version


def alias_version(client, model_name: str, alias: str):
    """The ModelVersion ``alias`` points at; None when the model or the alias does not exist yet.

    Any other failure (MLflow down, a bad answer) raises: "no champion" must never be a guess, or a
    gate would promote past a champion it could not read.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def current_champion(client, model_name: str):
    """The champion ModelVersion, or None when there is none yet."""
    return alias_version(client, model_name, CHAMPION)


def promote(
    tracking_uri: str,
    model_name: str,
    version: str,
    holdout: pd.DataFrame,
    schema: FeatureSchema,
    min_score: float,
    tolerance: float,
    metric: str = "roc_auc",
) -> TrainResult:
    """Score challenger and champion on the same holdout, apply the gate, tag the decision on the version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines.evaluate import evaluate_model

    client = MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    challenger = mlflow.sklearn.load_model(f"models:/{model_name}/{version}")
    challenger_metrics = evaluate_model(challenger, holdout, schema)
    champion = current_champion(client, model_name)
    champion_score = None
    if champion is not None and champion.version != version:
        champion_model = mlflow.sklearn.load_model(f"models:/{model_name}/{champion.version}")
        champion_score = evaluate_model(champion_model, holdout, schema)[metric]
    decision = decide_promotion(challenger_metrics[metric], champion_score, min_score, tolerance, metric)
    client.set_model_version_tag(
        model_name, version, "gate.decision", "promoted" if decision.promote else "rejected"
    )
    client.set_model_version_tag(model_name, version, "gate.reason", decision.reason)
    client.set_model_version_tag(model_name, version, "gate.details", json.dumps(asdict(decision)))
    if decision.promote:
        client.set_registered_model_alias(model_name, CHAMPION, version)
    champion_now = current_champion(client, model_name)
    model_version = client.get_model_version(model_name, version)
    return TrainResult(
        run_id=model_version.run_id,
        model_name=model_name,
        model_version=version,
        metrics={k: v for k, v in challenger_metrics.items() if not k.startswith("slice_")},
        promoted=decision.promote,
        reason=decision.reason,
        champion_version=champion_now.version if champion_now else None,
        previous_champion_version=champion.version if champion else None,
    )
