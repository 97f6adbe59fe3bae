"""Drift and live quality as plain functions: a window of inference records against a reference sample.

Evidently picks each column's test from the reference size and the column type
(declared through ``DataDefinition``): up to 1,000 reference rows it uses p-value
tests (K-S for numeric, chi-square / Z for categorical, drifted when p < 0.05);
above that, distances (normed Wasserstein for numeric, Jensen-Shannon for
categorical, drifted when >= 0.1). The reference logged with a model has up to
5,000 rows, so in practice the distances apply.

Evidently and MLflow are imported inside the functions: each takes seconds to
import, and the service should answer ``/ingest`` long before the first evaluation.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.evaluate import classification_metrics
from pipelines.features import FeatureSchema
from pipelines.registry import REFERENCE_ARTIFACT

log = logging.getLogger("sandbox.monitor.drift")

DRIFT, NO_DRIFT, INSUFFICIENT = "drift", "no_drift", "insufficient_data"
DEFAULT_MIN_ROWS = 200
DEFAULT_MIN_LABELLED_ROWS = 30


@dataclass(frozen=True)
class FeatureDrift:
    score: float
    drifted: bool
    method: str
    threshold: float


@dataclass
class DriftResult:
    verdict: str  # DRIFT | NO_DRIFT | INSUFFICIENT
    rows: int
    reference_rows: int
    min_rows: int
    drift_share: float | None = None  # share of features flagged; None when there is too little data
    features: dict[str, FeatureDrift] = field(default_factory=dict)
    model_version: str | None = None
    html: str | None = field(default=None, repr=False)

    @property
    def sufficient(self) -> bool:
        return self.verdict != INSUFFICIENT

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, f in self.features.items() if f.drifted]

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("html")
        out["drifted_features"] = self.drifted_features
        return out


def prepare(frame: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """The schema's columns with stable dtypes: numeric as float (junk -> NaN), categories as str or None."""
    out = pd.DataFrame(index=frame.index)
    for feature in schema.features:
        column = frame[feature.name] if feature.name in frame.columns else pd.Series(np.nan, index=frame.index)
        if feature.is_numeric:
            out[feature.name] = pd.to_numeric(column, errors="coerce").astype(float)
        else:
            out[feature.name] = column.astype(object).where(column.notna(), None).map(
                lambda v: v if v is None else str(v)
            )
    return out


def evaluate_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    schema: FeatureSchema,
    min_rows: int = DEFAULT_MIN_ROWS,
    min_drifted_features: int = 1,
    render_html: bool = True,
    model_version: str | None = None,
) -> DriftResult:
    """Evidently's DataDriftPreset over the schema's features.

    Below ``min_rows`` current rows the answer is ``insufficient_data`` with no flags:
    a handful of rows differs from any reference by chance, and that must not alarm.
    The verdict is ``drift`` when at least ``min_drifted_features`` features are flagged.
    """
    if reference.empty:
        raise ValueError("the reference sample is empty")
    base = dict(rows=len(current), reference_rows=len(reference), min_rows=min_rows, model_version=model_version)
    if len(current) < min_rows:
        return DriftResult(verdict=INSUFFICIENT, **base)

    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=schema.numeric, categorical_columns=schema.categorical)

    def dataset(frame: pd.DataFrame):
        return Dataset.from_pandas(prepare(frame, schema), data_definition=definition)

    with warnings.catch_warnings():
        # SciPy warns on empty histogram bins (a category absent on one side); that is the signal, not a fault.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report([DataDriftPreset(columns=schema.names)], include_tests=True).run(
            current_data=dataset(current), reference_data=dataset(reference)
        )
    features = _feature_drift(snapshot.dict(), schema)
    drifted = sum(f.drifted for f in features.values())
    return DriftResult(
        verdict=DRIFT if drifted >= min_drifted_features else NO_DRIFT,
        drift_share=drifted / len(schema.names),
        features=features,
        html=snapshot.get_html_str(as_iframe=False) if render_html else None,
        **base,
    )


def _feature_drift(snapshot: dict, schema: FeatureSchema) -> dict[str, FeatureDrift]:
    """Per-column score, method and threshold from the ValueDrift metrics; the flag from Evidently's own test."""
    failed = {
        test["metric_config"]["params"].get("column")
        for test in snapshot.get("tests", [])
        if test.get("status") == "FAIL" and test["metric_config"]["params"].get("type", "").endswith("ValueDrift")
    }
    features = {}
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if not config.get("type", "").endswith("ValueDrift"):
            continue
        name = config["column"]
        score = float(metric["value"])
        features[name] = FeatureDrift(
            score=score if np.isfinite(score) else float("nan"),
            drifted=name in failed,
            method=str(config.get("method")),
            threshold=float(config.get("threshold")),
        )
    missing = [n for n in schema.names if n not in features]
    if missing:
        raise RuntimeError(f"Evidently returned no drift result for {', '.join(missing)}")
    return {name: features[name] for name in schema.names}


def live_quality(labelled: pd.DataFrame, min_rows: int = DEFAULT_MIN_LABELLED_ROWS) -> dict | None:
    """Accuracy, F1 (and the rest of the classification metrics) on labelled records; None below ``min_rows``."""
    if len(labelled) < min_rows:
        return None
    metrics = classification_metrics(
        labelled["label"].astype(int), labelled["prediction"].astype(int), labelled["probability"].astype(float)
    )
    return {"rows": len(labelled), **metrics}


def rows_of_latest_version(window: pd.DataFrame) -> tuple[str | None, pd.DataFrame]:
    """The version that served the most recent record, and that version's rows (a swap starts a fresh window)."""
    if window.empty:
        return None, window
    latest = str(window.sort_values("received_at", kind="stable")["model_version"].iloc[-1])
    return latest, window[window["model_version"].astype(str) == latest]


def load_reference(tracking_uri: str, model_name: str, version: str) -> pd.DataFrame:
    """The reference sample logged with the run of ``model_name`` version ``version`` (cached per version).

    The returned frame is shared between callers: treat it as read-only.
    """
    return _load_reference(tracking_uri, model_name, str(version))


@functools.lru_cache(maxsize=16)
def _load_reference(tracking_uri: str, model_name: str, version: str) -> pd.DataFrame:
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    run_id = MlflowClient(tracking_uri).get_model_version(model_name, version).run_id
    with tempfile.TemporaryDirectory() as tmp:
        path = download_artifacts(
            run_id=run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=tmp, tracking_uri=tracking_uri
        )
        reference = pd.read_parquet(Path(path))
    log.info("loaded the reference of %s v%s (run %s): %d rows", model_name, version, run_id, len(reference))
    return reference
