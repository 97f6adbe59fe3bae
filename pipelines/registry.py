"""Registry: log a trained model to MLflow, register a version, and the promotion gate.

Aliases, not the deprecated stages. The offline gate (``promote``) scores a new version and the
champion on the same fresh holdout: a version that clears the floor and is not worse overall nor on
any slice becomes ``champion`` at once when there is none yet, else ``challenger``, which the release
controller (services/retrainer/release.py) runs in shadow and promotes only on live evidence; the
champion it replaces keeps ``previous``, the rollback target.
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

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
# What the offline gate did with a version (its `gate.decision` tag and TrainResult.outcome).
PROMOTED, SHADOW, REJECTED = "promoted", "shadow", "rejected"
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
    slice_tolerance: float | None = None
    worse_slices: dict[str, list[float]] | None = None  # slice -> [challenger, champion]
    slice_highs: dict[str, float] | None = None  # slice -> upper end of the paired CI of the difference

    @property
    def outcome(self) -> str:
        """promoted (no champion yet), shadow (passed; the challenger proves itself live), rejected."""
        if not self.promote:
            return REJECTED
        return PROMOTED if self.champion_score is None else SHADOW


def slice_scores(metrics: dict[str, float], metric: str, slice_by: str | None) -> dict[str, float]:
    """``{"region=north": 0.81, ...}`` from evaluate's ``slice_<feature>_<value>_<metric>`` keys."""
    if not slice_by:
        return {}
    prefix, suffix = f"slice_{slice_by}_", f"_{metric}"
    return {
        f"{slice_by}={key[len(prefix) : -len(suffix)]}": value
        for key, value in metrics.items()
        if key.startswith(prefix) and key.endswith(suffix)
    }


def worse_slices(
    challenger: dict[str, float],
    champion: dict[str, float],
    tolerance: float,
    highs: dict[str, float] | None = None,
) -> dict[str, list[float]]:
    """The slices both were scored on where the challenger is worse by more than ``tolerance`` and,
    where ``highs`` holds the upper end of the paired CI of ``challenger - champion``, clearly worse
    (that end below 0): the live gate's slice rule (services/retrainer/live_gate.py)."""
    highs = highs or {}
    return {
        name: [challenger[name], champion[name]]
        for name in sorted(set(challenger) & set(champion))
        if challenger[name] < champion[name] - tolerance and highs.get(name, -math.inf) < 0
    }


def slice_highs(
    challenger,
    champion,
    holdout: pd.DataFrame,
    schema: FeatureSchema,
    metric: str,
    only: set[str] | None = None,
) -> dict[str, float]:
    """Per slice of the holdout (or the ``only`` ones): the upper end of the paired bootstrap CI of
    ``challenger - champion`` on its rows (the live gate's ``compare``, its resamples and confidence).
    A slice has a few dozen to a few hundred holdout rows: its point estimate alone swings past any
    tolerance by chance. ~0.4 s of CPU a slice, so the gate asks only for slices already past it."""
    import numpy as np

    from pipelines.evaluate import MIN_SLICE_ROWS
    from sandbox.settings import Settings
    from services.retrainer.live_gate import compare

    if not schema.slice_by or metric not in ("roc_auc", "f1"):
        return {}  # no CI for this metric: the point estimates decide
    x, y = features_only(holdout, schema), holdout[schema.label].astype(int).to_numpy()
    before, after = (model.predict_proba(x)[:, 1] for model in (champion, challenger))
    values = holdout[schema.slice_by].astype(str).to_numpy()
    defaults = Settings.model_fields
    args = dict(resamples=defaults["release_bootstrap_resamples"].default,
                confidence=defaults["release_confidence"].default)  # fmt: skip
    return {  # a generator per slice: a slice's CI does not depend on which others were asked for
        f"{schema.slice_by}={value}": compare(
            metric, y[mask], before[mask], after[mask], rng=np.random.default_rng(0), **args
        ).high
        for value in sorted(set(values))
        if (only is None or f"{schema.slice_by}={value}" in only)
        and (mask := values == value).sum() >= MIN_SLICE_ROWS
    }


def decide_promotion(
    challenger_score: float,
    champion_score: float | None,
    min_score: float,
    tolerance: float,
    metric: str = "roc_auc",
    challenger_slices: dict[str, float] | None = None,
    champion_slices: dict[str, float] | None = None,
    slice_tolerance: float | None = None,
    slice_highs: dict[str, float] | None = None,
) -> GateDecision:
    """The gate, as a pure function: floor first, then no worse than the champion (within tolerance),
    overall and on every slice both were scored on (within ``slice_tolerance``, and clearly worse by
    ``slice_highs``, the upper ends of the slices' paired CIs, where given)."""
    worse = (
        worse_slices(challenger_slices or {}, champion_slices or {}, slice_tolerance, slice_highs)
        if champion_score is not None and slice_tolerance is not None
        else {}
    )
    args = dict(
        metric=metric,
        challenger_score=challenger_score,
        champion_score=champion_score,
        min_score=min_score,
        tolerance=tolerance,
        slice_tolerance=slice_tolerance,
        worse_slices=worse,
        slice_highs=slice_highs,
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
    if worse:
        named = ", ".join(
            f"{name} {mine:.4f} vs {theirs:.4f}"
            + (
                f" (paired CI of the difference up to {slice_highs[name]:+.4f})"
                if name in (slice_highs or {})
                else ""
            )
            for name, (mine, theirs) in worse.items()
        )
        return GateDecision(
            False,
            f"{metric} is worse than the champion's on slice {named} on the same holdout "
            f"(slice tolerance {slice_tolerance})",
            **args,
        )
    return GateDecision(
        True,
        f"{metric} {challenger_score:.4f} vs champion {champion_score:.4f} on the same holdout "
        f"(tolerance {tolerance}, every slice within {slice_tolerance}); challenger goes into shadow",
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

    Returns ``(run_id, version)``; the new version has no alias yet (the gate gives one).
    """
    import mlflow
    from mlflow.models import infer_signature

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
    return run.info.run_id, str(info.registered_model_version)


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
    slice_tolerance: float | None = None,
) -> TrainResult:
    """Score the new version and the champion on the same holdout, apply the gate, tag the decision on
    the version, and give it ``champion`` (no champion yet) or ``challenger`` (into shadow)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines.evaluate import evaluate_model

    client = MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    challenger = mlflow.sklearn.load_model(f"models:/{model_name}/{version}")
    challenger_metrics = evaluate_model(challenger, holdout, schema)
    champion = current_champion(client, model_name)
    champion_score, champion_metrics, highs = None, {}, {}
    if champion is not None and champion.version != version:
        champion_model = mlflow.sklearn.load_model(f"models:/{model_name}/{champion.version}")
        champion_metrics = evaluate_model(champion_model, holdout, schema)
        champion_score = champion_metrics[metric]
    mine, theirs = (slice_scores(m, metric, schema.slice_by) for m in (challenger_metrics, champion_metrics))
    if (
        champion_score is not None
        and slice_tolerance is not None
        and (past := worse_slices(mine, theirs, slice_tolerance))
    ):
        highs = slice_highs(challenger, champion_model, holdout, schema, metric, only=set(past))
    decision = decide_promotion(
        challenger_metrics[metric], champion_score, min_score, tolerance, metric,
        challenger_slices=mine, champion_slices=theirs,
        slice_tolerance=slice_tolerance, slice_highs=highs,
    )  # fmt: skip
    client.set_model_version_tag(model_name, version, "gate.decision", decision.outcome)
    client.set_model_version_tag(model_name, version, "gate.reason", decision.reason)
    client.set_model_version_tag(model_name, version, "gate.details", json.dumps(asdict(decision)))
    if decision.outcome == PROMOTED:
        client.set_registered_model_alias(model_name, CHAMPION, version)
    elif decision.outcome == SHADOW:  # the release controller takes it from here
        client.set_registered_model_alias(model_name, CHALLENGER, version)
    champion_now = current_champion(client, model_name)
    model_version = client.get_model_version(model_name, version)
    return TrainResult(
        run_id=model_version.run_id,
        model_name=model_name,
        model_version=version,
        metrics={k: v for k, v in challenger_metrics.items() if not k.startswith("slice_")},
        promoted=decision.outcome == PROMOTED,
        outcome=decision.outcome,
        reason=decision.reason,
        champion_version=champion_now.version if champion_now else None,
        previous_champion_version=champion.version if champion else None,
    )
