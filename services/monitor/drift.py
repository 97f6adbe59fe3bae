"""Drift and live quality as plain functions: a window of inference records against a reference sample.

The verdict is Evidently's data drift preset, column by column: each feature gets the
test the preset would pick for it (Evidently's own selection from the reference size
and the declared column type): up to 1,000 reference rows p-value tests (K-S for
numeric, chi-square / Z for categorical, drifted when p < 0.05); above that,
distances (normed Wasserstein for numeric, Jensen-Shannon for categorical, drifted
when >= 0.1). The reference logged with a model has up to 5,000 rows, so in
practice the distances apply.

Why the tests are called directly instead of through ``Report([DataDriftPreset()])``:
the preset builds plotly figures for every column whether or not anyone looks at
them; that was ~95 % of an evaluation (1.2 s for 10k rows, 1.1 s for 1k; the tests
alone take ~0.05 s). So the verdict runs the preset's tests (``column_tests``: same
selection, same thresholds, same scores, checked against the preset in
tests/unit/test_drift.py) and the preset's HTML report is rendered only when someone
asks for it (``drift_report_html``, the monitor's ``/reports/latest``).

Evidently drops missing values before testing, so a feature going missing is
invisible to it (and a column with no values at all makes it fail). Each feature's
missing share is therefore compared too: a rise of more than ``max_missing_increase``
flags the feature (method ``... + missing share``), and an all-missing column is
judged on its missing share alone.

Distances fluctuate with the sizes of both samples: on clean synthetic loans against a
5,000-row reference, some feature crossed 0.1 in 96 of 100 windows of 200 rows,
31 of 500, 4 of 1,000 and 0 of 2,000. Hence ``min_rows`` defaults to 1,000. A new
version's reference is smaller (the rows served after the alert), and at the loop's
sizes two samples of one distribution cross Evidently's 0.1 normed Wasserstein in
up to 15 % of verdicts (docs/drift-statistics.md): ``thresholds`` raises a test's
threshold by name (the monitor's ``SANDBOX_MONITOR_DRIFT_THRESHOLDS``) while the
test itself stays Evidently's choice.

Evidently and MLflow are imported inside the functions: each takes seconds to
import, and the service should answer ``/ingest`` long before the first evaluation.
"""

from __future__ import annotations

import functools
import logging
import math
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.evaluate import classification_metrics
from pipelines.features import FeatureSchema
from pipelines.registry import REFERENCE_ARTIFACT

log = logging.getLogger("sandbox.monitor.drift")

DRIFT, NO_DRIFT, INSUFFICIENT = "drift", "no_drift", "insufficient_data"
DEFAULT_MIN_ROWS = 1_000
DEFAULT_MAX_MISSING_INCREASE = 0.1
MISSING = "missing share"
DEFAULT_MIN_LABELLED_ROWS = 30


@dataclass(frozen=True)
class FeatureDrift:
    score: float
    drifted: bool
    method: str
    threshold: float
    missing_share: float = 0.0
    reference_missing_share: float = 0.0


@dataclass
class DriftResult:
    verdict: str  # DRIFT | NO_DRIFT | INSUFFICIENT
    rows: int
    reference_rows: int
    min_rows: int
    drift_share: float | None = None  # share of features flagged; None when there is too little data
    features: dict[str, FeatureDrift] = field(default_factory=dict)
    model_version: str | None = None

    @property
    def sufficient(self) -> bool:
        return self.verdict != INSUFFICIENT

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, f in self.features.items() if f.drifted]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["drifted_features"] = self.drifted_features
        return out


def prepare(frame: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """The schema's columns with stable dtypes: numeric as float (junk -> NaN), categories as str or None."""
    out = {}
    for feature in schema.features:
        column = (
            frame[feature.name] if feature.name in frame.columns else pd.Series(np.nan, index=frame.index)
        )
        if feature.is_numeric:
            out[feature.name] = pd.to_numeric(column, errors="coerce").astype(float)
        else:
            out[feature.name] = column.astype(str).astype(object).where(column.notna(), None)
    return pd.DataFrame(out, index=frame.index)


def evaluate_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame | None,
    schema: FeatureSchema,
    min_rows: int = DEFAULT_MIN_ROWS,
    min_drifted_features: int = 1,
    max_missing_increase: float = DEFAULT_MAX_MISSING_INCREASE,
    model_version: str | None = None,
    thresholds: Mapping[str, float] | None = None,
    prepared: bool = False,
) -> DriftResult:
    """The data drift preset's per-column tests over the schema's features, plus the missing-share check.

    Below ``min_rows`` current rows the answer is ``insufficient_data`` with no flags:
    a small window differs from any reference by chance, and that must not alarm (and
    ``reference`` may then be None, so a caller need not fetch it).
    The verdict is ``drift`` when at least ``min_drifted_features`` features are flagged.
    ``thresholds`` replaces the threshold of a test by its Evidently name (``{"wasserstein": 0.15}``);
    the test itself is still Evidently's choice, and a test not named keeps its default.
    ``prepared``: both frames come from :func:`prepare` already (the monitor prepares a window once
    for this and the data-quality checks, and a reference once a version).
    """
    reference_rows = 0 if reference is None else len(reference)
    base = dict(
        rows=len(current), reference_rows=reference_rows, min_rows=min_rows, model_version=model_version
    )
    if len(current) < min_rows:
        return DriftResult(verdict=INSUFFICIENT, **base)
    if reference is None or reference.empty:
        raise ValueError("the reference sample is empty")
    cur, ref = (current, reference) if prepared else (prepare(current, schema), prepare(reference, schema))
    testable = testable_columns(cur, ref, schema)
    evidently_drift = column_tests(cur[testable], ref[testable], schema, thresholds) if testable else {}
    features = {}
    missing_now, missing_before = cur.isna().mean(), ref.isna().mean()  # a frame at a time: fast
    for name in schema.names:
        missing, ref_missing = float(missing_now[name]), float(missing_before[name])
        rose = missing - ref_missing > max_missing_increase
        found = evidently_drift.get(name)
        if found is None:  # no values on one side: only the missing share can speak
            found = FeatureDrift(float("nan"), False, MISSING, max_missing_increase)
        elif rose:
            found = replace(found, method=f"{found.method} + {MISSING}")
        features[name] = replace(
            found, drifted=found.drifted or rose, missing_share=missing, reference_missing_share=ref_missing
        )
    drifted = sum(f.drifted for f in features.values())
    return DriftResult(
        verdict=DRIFT if drifted >= min_drifted_features else NO_DRIFT,
        drift_share=drifted / len(schema.names),
        features=features,
        **base,
    )


def testable_columns(current: pd.DataFrame, reference: pd.DataFrame, schema: FeatureSchema) -> list[str]:
    """Features with values on both sides (Evidently fails on a column with none)."""
    now, before = current[schema.names].notna().any(), reference[schema.names].notna().any()
    return [n for n in schema.names if now[n] and before[n]]


def column_tests(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    schema: FeatureSchema,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, FeatureDrift]:
    """Each column's drift test as ``DataDriftPreset`` runs it (its ``ValueDrift`` metrics), without the plots.

    Evidently's default selection (``get_stattest`` with no method asked for) and the test's own
    threshold (or the one ``thresholds`` gives that test's name), on the column without missing or
    infinite values: what ``ValueDrift`` does before it draws. The frames are ``prepare``d, every
    column has values on both sides.
    """
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    features = {}
    with warnings.catch_warnings():
        # SciPy warns on empty histogram bins (a category absent on one side); that is the signal, not a fault.
        warnings.simplefilter("ignore", RuntimeWarning)
        for name in current.columns:
            kind = ColumnType.Numerical if name in schema.numeric else ColumnType.Categorical
            ref, cur = _values(reference[name]), _values(current[name])
            test = get_stattest(ref, cur, kind, None)
            result = test(ref, cur, kind, (thresholds or {}).get(test.name))
            score = float(result.drift_score)
            features[name] = FeatureDrift(
                score=score if np.isfinite(score) else float("nan"),
                drifted=bool(result.drifted),
                method=test.display_name,
                threshold=float(result.actual_threshold),
            )
    return features


def _values(column: pd.Series) -> pd.Series:
    if column.dtype == object:  # categories: str or None
        return column.dropna()
    return column[np.isfinite(column.to_numpy())]


def run_preset(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    schema: FeatureSchema,
    thresholds: Mapping[str, float] | None = None,
):
    """Evidently's ``Report([DataDriftPreset])`` snapshot over the testable features (plots and all).

    With ``thresholds`` (by test name, as for ``evaluate_drift``), each column gets the threshold of
    the test Evidently picks for it, through the preset's ``per_column_threshold``.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    cur, ref = prepare(current, schema), prepare(reference, schema)
    columns = testable_columns(cur, ref, schema)
    per_column = (
        {n: f.threshold for n, f in column_tests(cur[columns], ref[columns], schema, thresholds).items()}
        if thresholds
        else None
    )
    # Declared types, so a numeric column with few values is not mistaken for a category (or back).
    definition = DataDefinition(
        numerical_columns=[c for c in columns if c in schema.numeric],
        categorical_columns=[c for c in columns if c in schema.categorical],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return Report(
            [DataDriftPreset(columns=columns, per_column_threshold=per_column)], include_tests=True
        ).run(
            current_data=Dataset.from_pandas(cur[columns], data_definition=definition),
            reference_data=Dataset.from_pandas(ref[columns], data_definition=definition),
        )


def drift_report_html(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    schema: FeatureSchema,
    thresholds: Mapping[str, float] | None = None,
) -> str:
    """The data drift preset's HTML report (self-contained) of a window against its reference."""
    return run_preset(current, reference, schema, thresholds).get_html_str(as_iframe=False)


def preset_mismatches(ours: dict[str, FeatureDrift], preset: dict[str, FeatureDrift]) -> list[str]:
    """Where ``column_tests`` and the preset disagree (column: what); empty when they agree."""
    if ours.keys() != preset.keys():
        return [f"columns: {sorted(ours)} vs {sorted(preset)}"]
    return [
        f"{name}: {o} vs {p}"
        for name, (o, p) in ((n, (ours[n], preset[n])) for n in ours)
        if (o.method, o.threshold, o.drifted) != (p.method, p.threshold, p.drifted)
        or not math.isclose(o.score, p.score, rel_tol=1e-9, abs_tol=1e-12)
    ]


def preset_features(snapshot) -> dict[str, FeatureDrift]:
    """Per-column score, method, threshold and flag as the preset's snapshot reports them.

    Not used for the verdict (``column_tests`` is): the check that both agree, for tests and benchmarks.
    """
    data = snapshot.dict()
    failed = {
        test["metric_config"]["params"].get("column")
        for test in data.get("tests", [])
        if test.get("status") == "FAIL"
        and test["metric_config"]["params"].get("type", "").endswith("ValueDrift")
    }
    features = {}
    for metric in data["metrics"]:
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
    return features


def live_quality(labelled: pd.DataFrame, min_rows: int = DEFAULT_MIN_LABELLED_ROWS) -> dict | None:
    """Accuracy, F1 (and the rest of the classification metrics) on labelled records; None below ``min_rows``."""
    if len(labelled) < min_rows:
        return None
    metrics = classification_metrics(
        labelled["label"].astype(int),
        labelled["prediction"].astype(int),
        labelled["probability"].astype(float),
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
