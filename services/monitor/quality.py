"""Data quality of a window, as plain functions: is the feed broken, whatever the drift verdict says?

Drift asks "did the world change?" (then retraining is the answer); these checks ask "did the
pipeline break?" (then a person is, and the window must never become training data or a drift
reference: docs/data-quality.md, docs/retraining.md). Each check compares the window with the
reference sample of the version that served it (``profile`` of it, computed once a version):

- ``missing_share``: a feature's missing share rose by more than ``max_missing_increase``
  (a field the client stopped sending);
- ``out_of_range``: share of a numeric feature's values outside the reference's [min, max],
  widened by ``RANGE_MARGIN`` of its span each side, above ``max_out_of_range_share`` (serving
  only bounds by the schema, which is wide);
- ``unseen_category``: share of a category's values the reference never had above
  ``max_unseen_category_share`` (a typo, a renamed code; serving accepts any string);
- ``scale_shift``: a numeric feature's median or IQR moved by more than ``max_scale_ratio``
  (either way) from the reference's: the signature of a unit change (income in thousands is
  still inside the schema's range, but its median is x0.001);
- ``constant``: a feature's most frequent value covers ``max_top_value_share`` of its values
  while it did not in the reference (a default filled in upstream);
- ``duplicate_rows``: the share of rows repeated exactly rose by more than ``max_duplicate_increase``
  (a client replaying its requests);
- ``rejected_share``: the share of rows serving refused (``rejected / (rejected + valid)`` in the
  window's time span) above ``max_rejected_share``;
- ``inverted_labels``: on the serving version's labelled rows, a slice (region) with at least
  ``min_labelled_slice_rows`` of them that it ranks backwards (roc_auc below ``min_slice_roc_auc``)
  while it ranks the other rows better than chance. A version that passed both gates ranks every
  slice well; a changed world (concept drift) drags all slices down together; one slice whose
  labels say the opposite of what the model learned is a broken label join (``label_bug``), or a
  model trained on one. Either way, retraining on those labels would learn the bug.

What runs through Evidently and what not (measured, 10k rows, this machine; benchmarks/drift.py):
the missing, out-of-range and unseen-category shares are what Evidently's ``MissingValueCount``,
``OutRangeValueCount`` and ``OutListValueCount`` count, and equal them (``evidently_counts``, the
tests' cross-check), but cost 0.012 s in pandas against 0.06 s through a ``Report`` (building its
``Dataset`` computes statistics of every column): the difference between meeting the 0.2 s budget
for drift and quality together and missing it. ``MedianValue``/``QuantileValue`` cost ~0.075 s
*each* (they build a distribution for their widget): 24 of them would be 1.8 s against well under
1 ms in NumPy; ``ConstantColumnsCount`` (0.1 s, and only exact constants) and ``DuplicatedRowCount``
(0.13 s) likewise lose to pandas.

Evidently is imported inside ``evidently_counts``: it takes seconds to import (see drift.py).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pandas as pd

from pipelines.features import FeatureSchema
from sandbox.settings import Settings
from services.monitor.drift import prepare

MISSING, OUT_OF_RANGE, UNSEEN_CATEGORY = "missing_share", "out_of_range", "unseen_category"
SCALE, CONSTANT, DUPLICATES, REJECTED = "scale_shift", "constant", "duplicate_rows", "rejected_share"
INVERTED_LABELS = "inverted_labels"  # its feature: the slice column (schema.slice_by)
CHANCE_ROC_AUC = 0.5  # inverted_labels: the other rows must be ranked better than this
FEATURE_CHECKS = (MISSING, OUT_OF_RANGE, UNSEEN_CATEGORY, SCALE, CONSTANT)
TABLE_CHECKS = (DUPLICATES, REJECTED)
# The reference's range is widened by this share of its span each side: values just past a
# sample's extremes are normal, and a covariate shift of 2 std (retrain, not page) pushed 5 % of
# credit_score past the bare minimum (measured, docs/data-quality.md).
RANGE_MARGIN = 0.1
REASONS = (
    "out_of_range",
    "wrong_type",
    "missing",
    "unknown_category",
    "too_many_rows",
    "body_too_large",
    "invalid_json",
    "other",
)


def _setting(name: str):
    return Settings.model_fields[f"data_quality_{name}"].default


@dataclass(frozen=True)
class QualityThresholds:
    """One threshold a check; a settings field ``data_quality_<name>`` gives the default (docs/data-quality.md)."""

    max_missing_increase: float = _setting("max_missing_increase")
    max_out_of_range_share: float = _setting("max_out_of_range_share")
    max_unseen_category_share: float = _setting("max_unseen_category_share")
    max_scale_ratio: float = _setting("max_scale_ratio")
    max_top_value_share: float = _setting("max_top_value_share")
    max_duplicate_increase: float = _setting("max_duplicate_increase")
    max_rejected_share: float = _setting("max_rejected_share")
    min_slice_roc_auc: float = _setting("min_slice_roc_auc")
    min_labelled_slice_rows: int = _setting("min_labelled_slice_rows")

    def __post_init__(self):
        if not 0.5 < self.max_top_value_share <= 1:
            raise ValueError("max_top_value_share must be over 0.5 (check_constant reads the median)")

    @classmethod
    def from_settings(cls, settings: Settings) -> QualityThresholds:
        return cls(**{f.name: getattr(settings, f"data_quality_{f.name}") for f in fields(cls)})


@dataclass(frozen=True)
class Failure:
    check: str
    feature: str | None  # None: a table-level check
    value: float
    reference: float | None
    threshold: float
    message: str  # what a person reads: the numbers, in the feature's units


@dataclass
class QualityResult:
    ok: bool | None  # None: not judged (too few rows)
    rows: int
    rejected_rows: int = 0
    rejected_share: float | None = None
    checked: list[tuple[str, str | None]] = field(default_factory=list)  # (check, feature) that ran
    failed: list[Failure] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "rows": self.rows,
            "rejected_rows": self.rejected_rows,
            "rejected_share": self.rejected_share,
            "failed": [asdict(f) for f in self.failed],
        }


@dataclass(frozen=True)
class Profile:
    """What the checks need of a reference sample: computed once per model version."""

    rows: int
    missing: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    median: dict[str, float]
    iqr: dict[str, float]
    categories: dict[str, tuple[str, ...]]
    top_share: dict[str, float]
    duplicate_share: float


# --- numbers -------------------------------------------------------------------------------------


def num(value: float) -> str:
    """A number as a person reads it: 51,800 · 52.3 · 0.034."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 1_000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def pct(share: float) -> str:
    return f"{100 * share:.1f}%" if 0 < share < 0.001 or share > 0.999 else f"{100 * share:.0f}%"


def ratio_text(ratio: float) -> str:
    return f"x{ratio:.3g}" if ratio >= 0.01 else f"x{ratio:.1g}"


# --- the reference ---------------------------------------------------------------------------------


def _top_share(column: pd.Series) -> tuple[float, object]:
    counts = column.value_counts(sort=True)  # missing values left out
    if counts.empty:
        return 0.0, None
    return float(counts.iloc[0] / counts.sum()), counts.index[0]


def duplicate_share(frame: pd.DataFrame) -> float:
    """Share of rows that repeat an earlier row exactly (all features, missing equal to missing)."""
    return float(frame.duplicated().mean()) if len(frame) else 0.0


def profile(reference: pd.DataFrame, schema: FeatureSchema) -> Profile:
    ref = prepare(reference, schema)
    numeric = ref[schema.numeric]
    q = numeric.quantile([0.25, 0.5, 0.75])
    low, high = numeric.min(), numeric.max()
    margin = (high - low) * RANGE_MARGIN
    return Profile(
        rows=len(ref),
        missing={n: float(ref[n].isna().mean()) for n in schema.names},
        low={n: float(low[n] - margin[n]) for n in schema.numeric},
        high={n: float(high[n] + margin[n]) for n in schema.numeric},
        median={n: float(q.loc[0.5, n]) for n in schema.numeric},
        iqr={n: float(q.loc[0.75, n] - q.loc[0.25, n]) for n in schema.numeric},
        categories={n: tuple(sorted(ref[n].dropna().unique())) for n in schema.categorical},
        top_share={n: _top_share(ref[n])[0] for n in schema.names},
        duplicate_share=duplicate_share(ref),
    )


# --- Evidently's counts ------------------------------------------------------------------------------


def counts(current: pd.DataFrame, ref: Profile, schema: FeatureSchema) -> dict[tuple[str, str], float]:
    """Shares by (check, feature) on a ``prepare``d window, as Evidently's metrics count them.

    The missing share (of all rows), the share outside the reference's [min, max] and the share of
    categories it never had (of the non-missing values, bounds inclusive). Features with no values
    in the window (or no range or categories in the reference) have only the missing share.
    Equal to :func:`evidently_counts` (tests/unit/test_quality.py) at a sixth of its cost.
    """
    missing = current.isna().mean()  # a frame at a time
    out: dict[tuple[str, str], float] = {}
    for name in schema.names:
        out[(MISSING, name)] = float(missing[name])
        values = current[name].dropna()
        if values.empty:
            continue
        if name in ref.low and math.isfinite(ref.low[name]):
            numbers = values.to_numpy(float)
            outside = (numbers < ref.low[name]) | (numbers > ref.high[name])
            out[(OUT_OF_RANGE, name)] = float(outside.mean())
        elif ref.categories.get(name):
            out[(UNSEEN_CATEGORY, name)] = float((~values.isin(ref.categories[name])).mean())
    return out


def evidently_counts(
    current: pd.DataFrame, ref: Profile, schema: FeatureSchema
) -> dict[tuple[str, str], float]:
    """The shares of :func:`counts` from Evidently's metrics: ``MissingValueCount``,
    ``OutRangeValueCount`` and ``OutListValueCount``. The cross-check of the counts the monitor
    uses, in the tests and benchmarks/drift.py (six times their cost, most of it building the
    ``Dataset``, which computes statistics of every column whatever the metrics ask).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently import metrics as m

    keys, metrics = [], []
    for name in schema.names:
        keys.append((MISSING, name))
        metrics.append(m.MissingValueCount(column=name))
        if current[name].isna().all():
            continue
        if name in ref.low and math.isfinite(ref.low[name]):
            keys.append((OUT_OF_RANGE, name))
            metrics.append(m.OutRangeValueCount(column=name, left=ref.low[name], right=ref.high[name]))
        elif ref.categories.get(name):
            keys.append((UNSEEN_CATEGORY, name))
            metrics.append(m.OutListValueCount(column=name, values=list(ref.categories[name])))
    definition = DataDefinition(numerical_columns=schema.numeric, categorical_columns=schema.categorical)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report(metrics).run(current_data=Dataset.from_pandas(current, data_definition=definition))
    values = [metric["value"] for metric in snapshot.dict()["metrics"]]
    return {key: float(value["share"]) for key, value in zip(keys, values, strict=True)}


# --- the checks: each returns its failures (empty: passed) --------------------------------------------


def check_missing(shares: dict, ref: Profile, schema: FeatureSchema, max_increase: float) -> list[Failure]:
    out = []
    for name in schema.names:
        share, before = shares[(MISSING, name)], ref.missing[name]
        if share - before > max_increase:
            out.append(Failure(MISSING, name, share, before, max_increase,
                f"{name}: {pct(share)} missing vs {pct(before)} in the reference "
                f"(+{100 * (share - before):.0f} points, at most +{100 * max_increase:.0f} allowed)"))  # fmt: skip
    return out


def check_out_of_range(shares: dict, ref: Profile, schema: FeatureSchema, max_share: float) -> list[Failure]:
    out = []
    for name in schema.numeric:
        share = shares.get((OUT_OF_RANGE, name))
        if share is not None and share > max_share:
            out.append(Failure(OUT_OF_RANGE, name, share, None, max_share,
                f"{name}: {pct(share)} of values outside the reference's range (+{RANGE_MARGIN:.0%} of it) "
                f"[{num(ref.low[name])}, {num(ref.high[name])}] (at most {pct(max_share)} allowed)"))  # fmt: skip
    return out


def check_unseen_categories(
    shares: dict, current: pd.DataFrame, ref: Profile, schema: FeatureSchema, max_share: float
) -> list[Failure]:
    out = []
    for name in schema.categorical:
        share = shares.get((UNSEEN_CATEGORY, name))
        if share is not None and share > max_share:
            values = current[name].dropna()
            unseen = values[~values.isin(ref.categories[name])].value_counts().index[:3]
            out.append(Failure(UNSEEN_CATEGORY, name, share, None, max_share,
                f"{name}: {pct(share)} of values never seen in the reference "
                f"(e.g. {', '.join(repr(v) for v in unseen)}; at most {pct(max_share)} allowed)"))  # fmt: skip
    return out


def check_scale(
    current: pd.DataFrame, ref: Profile, schema: FeatureSchema, max_ratio: float
) -> list[Failure]:
    """Median, then IQR, against the reference's; a statistic that is 0 in the reference is not compared."""
    out = []
    numeric = current[schema.numeric]
    q = numeric.quantile([0.25, 0.5, 0.75])
    for name in schema.numeric:
        if numeric[name].isna().all():
            continue
        now = {"median": float(q.loc[0.5, name]), "IQR": float(q.loc[0.75, name] - q.loc[0.25, name])}
        before = {"median": ref.median[name], "IQR": ref.iqr[name]}
        for stat in ("median", "IQR"):
            if not before[stat] or not math.isfinite(before[stat]):
                continue
            ratio = abs(now[stat] / before[stat])
            if ratio > max_ratio or ratio < 1 / max_ratio:
                out.append(Failure(SCALE, name, now[stat], before[stat], max_ratio,
                    f"{name}: {stat} {num(now[stat])} vs {num(before[stat])} in the reference, "
                    f"{ratio_text(ratio)} (a unit change? at most x{max_ratio:g} either way allowed)"))  # fmt: skip
                break  # one failure a feature: the median says it, the IQR would repeat it
    return out


def _median_share(column: pd.Series) -> tuple[float, object]:
    """The median's share of a numeric column's values: its top share whenever that is over half
    (a value covering most rows is the median), at the cost of a comparison, not a value count."""
    values = column.to_numpy()
    values = values[np.isfinite(values)]
    if not len(values):
        return 0.0, None
    median = float(np.median(values))
    return float(np.mean(values == median)), median


def check_constant(
    current: pd.DataFrame, ref: Profile, schema: FeatureSchema, max_share: float
) -> list[Failure]:
    """``max_share`` > 0.5 (settings): then a numeric feature's top share is its median's."""
    out = []
    for name in schema.names:
        share, value = (_median_share if name in schema.numeric else _top_share)(current[name])
        if share >= max_share and ref.top_share[name] < max_share:
            shown = num(value) if isinstance(value, float) else repr(value)
            out.append(Failure(CONSTANT, name, share, ref.top_share[name], max_share,
                f"{name}: {pct(share)} of values are {shown} (the most frequent value had "
                f"{pct(ref.top_share[name])} in the reference; {pct(max_share)} counts as constant)"))  # fmt: skip
    return out


def check_duplicates(current: pd.DataFrame, ref: Profile, max_increase: float) -> list[Failure]:
    share = duplicate_share(current)
    if share - ref.duplicate_share <= max_increase:
        return []
    return [Failure(DUPLICATES, None, share, ref.duplicate_share, max_increase,
        f"{pct(share)} of rows repeat an earlier row exactly vs {pct(ref.duplicate_share)} in the reference "
        "(a client resending its requests?)")]  # fmt: skip


def check_rejected(rejected: int, valid: int, by_reason: dict[str, int], max_share: float) -> list[Failure]:
    total = rejected + valid
    share = rejected / total if total else 0.0
    if share <= max_share:
        return []
    reasons = ", ".join(
        f"{reason} {count}" for reason, count in sorted(by_reason.items(), key=lambda kv: -kv[1])
    )
    return [Failure(REJECTED, None, share, None, max_share,
        f"{pct(share)} of rows were rejected by serving ({rejected:,} of {total:,}: {reasons}); "
        f"at most {pct(max_share)} allowed; see 'what the client actually sends'")]  # fmt: skip


def slice_roc_aucs(
    labelled: pd.DataFrame, slice_by: str | None, min_rows: int
) -> dict[str, tuple[float, int, float, int]]:
    """Per slice ("region=north"): (roc_auc, rows) of the probability against the labels on it, and
    the same on every other labelled row; for the slices where both sides have ``min_rows`` rows
    holding both labels."""
    from sklearn.metrics import roc_auc_score  # the monitor has it imported already (classification_metrics)

    if not slice_by or slice_by not in labelled:
        return {}
    labels, scores = (
        labelled["label"].astype(int).to_numpy(),
        labelled["probability"].astype(float).to_numpy(),
    )
    values = labelled[slice_by].astype(str).to_numpy()
    out = {}
    for value in sorted(set(values)):
        inside = values == value
        sides = [(labels[m], scores[m]) for m in (inside, ~inside)]
        if all(len(y) >= min_rows and 0 < y.sum() < len(y) for y, _ in sides):
            (y_in, p_in), (y_out, p_out) = sides
            out[f"{slice_by}={value}"] = (
                float(roc_auc_score(y_in, p_in)),
                len(y_in),
                float(roc_auc_score(y_out, p_out)),
                len(y_out),
            )
    return out


def check_inverted_labels(
    labelled: pd.DataFrame, slice_by: str | None, min_rows: int, min_roc_auc: float
) -> tuple[list[Failure], list[str]]:
    """The failures, and the slices judged. A slice fails when the version ranks it backwards while
    it ranks the other rows better than chance: a world that changed drags every slice down together
    (concept_drift at severity 2 takes the lowest to 0.33 and the others with it, to 0.37-0.43), a
    broken join for one slice does not. A failure's ``reference`` is the other rows' roc_auc."""
    aucs = slice_roc_aucs(labelled, slice_by, min_rows)
    failed = [
        Failure(
            INVERTED_LABELS,
            slice_by,
            auc,
            rest,
            min_roc_auc,
            f"labels of {name} look inverted: the serving version ranks them backwards (roc_auc {auc:.2f} "
            f"on {rows:,} labelled rows, under {min_roc_auc:g}) while it ranks the other rows better than chance "
            f"({rest:.2f} on {rest_rows:,}). A broken label join upstream, or a version trained on one: "
            "check the label source before any retraining",
        )  # fmt: skip
        for name, (auc, rows, rest, rest_rows) in aucs.items()
        if auc < min_roc_auc and rest > CHANCE_ROC_AUC
    ]
    return failed, list(aucs)


# --- the verdict ------------------------------------------------------------------------------------


def evaluate_quality(
    current: pd.DataFrame,
    reference: Profile | None,
    schema: FeatureSchema,
    thresholds: QualityThresholds,
    min_rows: int,
    rejected: int = 0,
    valid_in_span: int | None = None,
    rejected_by_reason: dict[str, int] | None = None,
    prepared: bool = False,
    labelled: pd.DataFrame | None = None,
) -> QualityResult:
    """Every check on ``current`` (one version's rows) against its reference's profile.

    The feature checks run when ``current`` has ``min_rows`` rows (as the drift verdict: fewer
    differ from any reference by chance). The rejected share runs when ``rejected + valid_in_span``
    (all rows received in the window's time span, every version) reach ``min_rows``, so a flood
    of rejections with hardly a valid row is still judged. ``ok`` is None when neither ran.
    ``prepared``: ``current`` comes from :func:`prepare` already. ``labelled``: the version's
    labelled rows (label, probability, the slice column), for ``inverted_labels``; the check runs
    on the groups with enough of them, whatever the window's size.
    """
    valid = len(current) if valid_in_span is None else valid_in_span
    total = rejected + valid
    result = QualityResult(
        ok=None, rows=len(current), rejected_rows=rejected, rejected_share=rejected / total if total else None
    )
    t = thresholds
    if len(current) >= min_rows and reference is not None:
        cur = current if prepared else prepare(current, schema)
        shares = counts(cur, reference, schema)
        result.failed += check_missing(shares, reference, schema, t.max_missing_increase)
        result.failed += check_out_of_range(shares, reference, schema, t.max_out_of_range_share)
        result.failed += check_unseen_categories(shares, cur, reference, schema, t.max_unseen_category_share)
        result.failed += check_scale(cur, reference, schema, t.max_scale_ratio)
        result.failed += check_constant(cur, reference, schema, t.max_top_value_share)
        result.failed += check_duplicates(cur, reference, t.max_duplicate_increase)
        result.checked += [(c, n) for (c, n) in shares if c != MISSING]
        result.checked += [(MISSING, n) for n in schema.names] + [(SCALE, n) for n in schema.numeric]
        result.checked += [(CONSTANT, n) for n in schema.names] + [(DUPLICATES, None)]
    if total >= min_rows:
        result.failed += check_rejected(rejected, valid, rejected_by_reason or {}, t.max_rejected_share)
        result.checked.append((REJECTED, None))
    if labelled is not None and len(labelled):
        failed, judged = check_inverted_labels(
            labelled, schema.slice_by, t.min_labelled_slice_rows, t.min_slice_roc_auc
        )
        result.failed += failed
        result.checked += [(INVERTED_LABELS, schema.slice_by)] if judged else []
    if result.checked:
        result.ok = not result.failed
    return result
