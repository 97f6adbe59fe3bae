"""Drift scenarios: the same code shifts training data and live traffic.

Each scenario takes a frame in the loan schema and a ``severity`` (0 = no change,
1 = the stated full effect) and returns a changed copy. What each one claims:

- ``covariate_shift``: ``credit_score`` mean falls and ``debt_to_income`` mean rises,
  each by ``severity`` x its reference standard deviation (values stay in the schema's range).
- ``new_category``: ``0.3 x severity`` of rows get ``region = "overseas"``, a value the
  schema has never seen.
- ``missing_values``: ``0.3 x severity`` of ``income``, ``employment_years`` and
  ``credit_score`` values become missing.
- ``concept_drift``: P(default | x) changes: ``0.5 x severity`` of the non-defaulting
  applicants with a good score (>= 700) now default. Features are untouched.
- ``label_shift``: P(default) rises by ``severity`` x (1 - base rate) x 0.5 by keeping every
  defaulting row and subsampling the others (the frame gets shorter, no row repeats), P(x | y) unchanged.
- ``unit_change``: an upstream bug, not a changed world: ``min(severity, 1)`` of rows send
  ``income`` in thousands of USD instead of USD (x 0.001). Every value stays inside the schema's
  range, so serving accepts the rows; only the monitor's data-quality checks can tell. Labels are
  untouched (the applicants did not change, their paperwork did).
- ``label_bug``: a broken label join upstream, not a changed world: the labels of ``region = north``
  are inverted (default <-> repaid) on ``min(severity, 1)`` of its rows; features untouched. In a
  training frame the offline gate cannot see it (its holdout carries the same bug, so the champion
  looks worse there, not the challenger); only live labels can: the release's live gate rejects
  the version in shadow (docs/releases.md, "A bad release").
- ``launch_label_bug``: a market launch whose label join is broken: ``0.3 x severity`` of rows get
  ``region = "overseas"`` (``new_category``'s value) and their labels inverted. A version trained on
  it passes the offline gate (the same bug is in its holdout) and the live gate while no overseas
  traffic exists yet; once the launch sends it (``new_category`` traffic, true labels), the bake
  sees the slice collapse and rolls it back (docs/releases.md, "A late regression").

Traffic adds one incident of its own, ``invalid_rows`` (sandbox/traffic.py): rows that fail serving's
validation cannot be a training frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.data import DataError
from pipelines.features import LABEL, LOAN_SCHEMA

SCENARIOS = (
    "none", "covariate_shift", "new_category", "missing_values", "concept_drift", "label_shift", "unit_change",
    "label_bug", "launch_label_bug",
)  # fmt: skip

COVARIATE_SHIFT = {"credit_score": -1.0, "debt_to_income": +1.0}  # direction, in standard deviations
NEW_CATEGORY = ("region", "overseas")
MISSING_COLUMNS = ("income", "employment_years", "credit_score")
UNIT_CHANGE = {"income": 0.001}  # feature -> factor: USD sent as thousands of USD
LABEL_BUG = ("region", "north")  # the slice whose labels a broken join inverts
FRACTION_PER_SEVERITY = {
    "new_category": 0.3, "missing_values": 0.3, "concept_drift": 0.5, "unit_change": 1.0, "label_bug": 1.0,
    "launch_label_bug": 0.3,
}  # fmt: skip


def affected_fraction(scenario: str, severity: float) -> float:
    return min(FRACTION_PER_SEVERITY[scenario] * severity, 1.0)


def check_scenario(scenario: str, severity: float) -> None:
    if scenario not in SCENARIOS:
        raise DataError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if not 0 <= severity <= 3:
        raise DataError(f"severity must be between 0 and 3, got {severity}")


def apply_scenario(
    frame: pd.DataFrame,
    scenario: str,
    severity: float = 1.0,
    seed: int = 0,
    reference_std: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Return a drifted copy of ``frame``. ``reference_std`` fixes the shift unit (defaults to this frame's)."""
    check_scenario(scenario, severity)
    if scenario == "none" or severity == 0:
        return frame.copy()
    missing = [c for c in LOAN_SCHEMA.names if c not in frame.columns]
    if missing:
        raise DataError(f"scenario {scenario!r} needs the loan schema; the frame lacks {', '.join(missing)}")
    needs_label = scenario in ("concept_drift", "label_shift", "label_bug", "launch_label_bug")
    if needs_label and LABEL not in frame.columns:
        raise DataError(f"scenario {scenario!r} changes labels, but the frame has no {LABEL!r} column")
    rng = np.random.default_rng(seed)
    out = frame.copy()
    if scenario == "covariate_shift":
        for col, direction in COVARIATE_SHIFT.items():
            std = (reference_std or {}).get(col) or float(frame[col].std())
            feature = LOAN_SCHEMA[col]
            shifted = (out[col] + direction * severity * std).clip(feature.low, feature.high)
            out[col] = shifted.round().astype(out[col].dtype) if feature.kind == "int" else shifted
    elif scenario in ("new_category", "launch_label_bug"):
        col, value = NEW_CATEGORY
        out[col] = out[col].astype(object)
        launched = rng.random(len(out)) < affected_fraction(scenario, severity)
        out.loc[launched, col] = value
        if scenario == "launch_label_bug":
            out.loc[launched, LABEL] = 1 - out.loc[launched, LABEL]
    elif scenario == "missing_values":
        for col in MISSING_COLUMNS:
            out[col] = out[col].astype(float)
            out.loc[rng.random(len(out)) < affected_fraction(scenario, severity), col] = np.nan
    elif scenario == "unit_change":
        changed = rng.random(len(out)) < affected_fraction(scenario, severity)
        for col, factor in UNIT_CHANGE.items():
            out[col] = out[col].astype(float)
            out.loc[changed, col] = out.loc[changed, col] * factor
    elif scenario == "concept_drift":
        flip = (
            (out[LABEL] == 0)
            & (out["credit_score"] >= 700)
            & (rng.random(len(out)) < affected_fraction(scenario, severity))
        )
        out.loc[flip, LABEL] = 1
    elif scenario == "label_bug":
        col, value = LABEL_BUG
        flip = (out[col] == value) & (rng.random(len(out)) < affected_fraction(scenario, severity))
        out.loc[flip, LABEL] = 1 - out.loc[flip, LABEL]
    elif scenario == "label_shift":
        base = float(out[LABEL].mean())
        target = min(base + min(severity, 1.0) * (1 - base) * 0.5, 0.99)
        pos, neg = out[out[LABEL] == 1], out[out[LABEL] == 0]
        if pos.empty:
            raise DataError("label_shift needs at least one positive row to resample")
        # Every positive kept and negatives subsampled, never a row twice: repeated rows are a
        # data-quality failure of their own (duplicate_rows), not a changed world.
        n_neg = min(round(len(pos) * (1 - target) / target), len(neg))
        out = pd.concat([pos, neg.sample(n=n_neg, replace=False, random_state=seed)])
        out = out.sample(frac=1, random_state=seed).reset_index(drop=True)
    return out
