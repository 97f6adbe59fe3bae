"""The live gate: champion vs challenger on the SAME labelled live rows, with a paired bootstrap.

Each bootstrap resample draws one index matrix (resamples x rows) and scores both models on the
same drawn rows, so the spread of ``challenger - champion`` is the paired one (the rows' own
difficulty cancels). Everything is NumPy on whole matrices: no Python loop over rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import norm, rankdata

# A slice scored in the live gate or the bake needs this many labelled rows: below it one region's
# roc_auc swings by more than any tolerance.
MIN_SLICE_ROWS = 100


def roc_auc_rows(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """roc_auc of each row of ``(k, n)`` matrices (Mann-Whitney U with average ranks); NaN on one class."""
    ranks = rankdata(score, axis=1)
    positives = y.sum(axis=1)
    negatives = y.shape[1] - positives
    u = (ranks * y).sum(axis=1) - positives * (positives + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((positives > 0) & (negatives > 0), u / (positives * negatives), np.nan)


def roc_auc_upper(y: np.ndarray, score: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """roc_auc of one sample and the upper end of its two-sided ``confidence`` interval, or None
    on one class. The standard error is DeLong's (from each row's placement among the other class):
    one version's rows in a bake have no pair to bootstrap against, and the bound is read every poll.
    """
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=float)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives < 2 or negatives < 2:
        return None
    ranks = rankdata(score)
    # Per positive, the share of negatives scored below it; per negative, the share of positives above.
    above_negatives = (ranks[y] - rankdata(score[y])) / negatives
    below_positives = 1 - (ranks[~y] - rankdata(score[~y])) / positives
    auc = float(above_negatives.mean())
    se = float(np.sqrt(above_negatives.var(ddof=1) / positives + below_positives.var(ddof=1) / negatives))
    return auc, auc + float(norm.ppf(1 - (1 - confidence) / 2)) * se


def f1_rows(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """f1 of each row of ``(k, n)`` matrices (0 when there is no positive at all, as sklearn)."""
    tp = (y * pred).sum(axis=1)
    wrong = (pred != y).sum(axis=1)
    denominator = 2 * tp + wrong
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / denominator, 0.0)


def score_rows(metric: str, y: np.ndarray, prob: np.ndarray) -> np.ndarray:
    if metric == "roc_auc":
        return roc_auc_rows(y, prob)
    if metric == "f1":
        return f1_rows(y, (prob >= 0.5).astype(np.int8))
    raise ValueError(f"the live gate knows roc_auc and f1, not {metric!r}")


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    champion: float
    challenger: float
    difference: float  # challenger - champion on all rows
    low: float  # the paired bootstrap CI of the difference
    high: float
    rows: int


def compare(
    metric: str,
    y: np.ndarray,
    champion_prob: np.ndarray,
    challenger_prob: np.ndarray,
    resamples: int,
    confidence: float,
    rng: np.random.Generator,
) -> MetricComparison:
    """``challenger - champion`` on ``metric``, with its paired bootstrap CI."""
    y = np.asarray(y, dtype=np.int8)
    both = np.stack([champion_prob, challenger_prob]).astype(float)
    observed = score_rows(metric, np.stack([y, y]), both)
    index = rng.integers(0, len(y), size=(resamples, len(y)))  # the same rows for both models
    ys = y[index]
    differences = score_rows(metric, ys, both[1][index]) - score_rows(metric, ys, both[0][index])
    alpha = (1 - confidence) / 2
    low, high = (
        np.nanquantile(differences, [alpha, 1 - alpha]) if np.isfinite(differences).any() else (np.nan,) * 2
    )
    return MetricComparison(
        metric, round(float(observed[0]), 5), round(float(observed[1]), 5),
        round(float(observed[1] - observed[0]), 5), round(float(low), 5), round(float(high), 5), len(y),
    )  # fmt: skip


@dataclass
class LiveGateResult:
    promote: bool
    reason: str
    rows: int
    metrics: list[MetricComparison]
    slices: dict[str, list[MetricComparison]] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)
    slice_tolerances: dict[str, float] = field(default_factory=dict)
    confidence: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def champion_figures(self) -> dict:
        """The champion's live scores on these rows (overall and per slice): the bake's baseline."""
        return {
            "overall": {m.metric: m.champion for m in self.metrics},
            "slices": {name: {m.metric: m.champion for m in ms} for name, ms in self.slices.items()},
        }


def _worse(comparison: MetricComparison, tolerance: float) -> bool:
    """Overall, worse beyond the tolerance: the CI of the difference reaches below -tolerance.

    A non-inferiority test: the challenger must show it is not worse. NaN (one class only in the
    rows) is no evidence of "not worse" either.
    """
    return not (comparison.low >= -tolerance)


def _slice_regresses(comparison: MetricComparison, tolerance: float) -> bool:
    """A slice regresses when it is clearly worse (the whole CI below 0) by more than the tolerance.

    Not the overall test: a slice has ~1/5 of the rows, and at 1,000 paired rows a region's CI is
    ~0.15 wide (measured), so asking every slice to prove itself would reject good challengers.
    """
    return comparison.high < 0 and comparison.difference < -tolerance


def live_gate(
    y: np.ndarray,
    champion_prob: np.ndarray,
    challenger_prob: np.ndarray,
    slices: np.ndarray | None,
    tolerances: dict[str, float],
    slice_tolerances: dict[str, float],
    resamples: int,
    confidence: float,
    seed: int = 0,
    slice_name: str = "region",
) -> LiveGateResult:
    """Promote only when the challenger is not worse than the champion beyond each metric's tolerance
    overall (``tolerances``: metric -> tolerance, the metrics compared), and no slice with enough rows
    clearly regresses beyond its metric's ``slice_tolerances``."""
    metrics = list(tolerances)
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    args = dict(resamples=resamples, confidence=confidence, rng=rng)
    overall = [compare(m, y, champion_prob, challenger_prob, **args) for m in metrics]
    by_slice: dict[str, list[MetricComparison]] = {}
    if slices is not None:
        values = np.asarray(slices).astype(str)
        for value in sorted(set(values)):  # a loop over the few slices, not over rows
            mask = values == value
            if mask.sum() >= MIN_SLICE_ROWS:
                by_slice[f"{slice_name}={value}"] = [
                    compare(m, y[mask], champion_prob[mask], challenger_prob[mask], **args) for m in metrics
                ]
    result = dict(rows=len(y), metrics=overall, slices=by_slice, tolerances=dict(tolerances),
                  slice_tolerances=dict(slice_tolerances), confidence=confidence)  # fmt: skip
    pct = f"{confidence:.0%} CI"
    for c in overall:
        if _worse(c, tolerances[c.metric]):
            return LiveGateResult(False, f"worse on live rows: {c.metric} {c.challenger:.4f} vs champion "
                                  f"{c.champion:.4f}, difference {c.difference:+.4f} ({pct} {c.low:+.4f}..{c.high:+.4f}) "
                                  f"reaches below -{tolerances[c.metric]} on {c.rows} paired rows", **result)  # fmt: skip
    for name, comparisons in by_slice.items():
        for c in comparisons:
            if _slice_regresses(c, slice_tolerances[c.metric]):
                return LiveGateResult(False, f"slice {name} regresses on live rows: {c.metric} {c.challenger:.4f} vs "
                                      f"champion {c.champion:.4f} ({pct} {c.low:+.4f}..{c.high:+.4f}, tolerance "
                                      f"{slice_tolerances[c.metric]}, {c.rows} rows)", **result)  # fmt: skip
    summary = ", ".join(
        f"{c.metric} {c.difference:+.4f} ({pct} {c.low:+.4f}..{c.high:+.4f})" for c in overall
    )
    tie = any(c.low <= 0 <= c.high for c in overall)
    verdict = "tie within tolerance -> promote" if tie else "better -> promote"
    within = ", ".join(f"{m} {t}" for m, t in slice_tolerances.items())
    return LiveGateResult(True, f"{verdict}: {summary} on {len(y)} paired rows, every slice within "
                          f"{within}", **result)  # fmt: skip
