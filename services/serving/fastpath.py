"""The served pipeline's preprocessing compiled to NumPy: the pipeline's own numbers, without pandas.

Per call the scikit-learn pipeline spends ~5 ms in pandas and the ColumnTransformer and ~0.5 ms
in the trees. ``compile_pipeline`` reads the fitted preprocessing (each imputer's ``statistics_``,
each encoder's ``categories_``) into a few arrays and dicts; ``CompiledPipeline.predict_proba``
builds the classifier's float matrix straight from the request's columns (``rows.columns_of``)
and calls the fitted classifier's own ``predict_proba`` on it. The trees are not re-implemented:
only the preprocessing is, and it is exact (a median copied, a 1.0 set), so the matrix is the
pipeline's bit for bit.

It knows the structure ``pipelines/train.py: build_model`` makes (imputed numeric columns, imputed
and one-hot encoded categories). Anything else raises ``NotCompilable`` with what it did not
recognise; ``compile_checked`` then keeps the pipeline, as it does when the compiled model's
probabilities differ from the pipeline's by more than ``TOLERANCE`` on the check rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from pipelines.features import FeatureSchema
from pipelines.train import features_only

TOLERANCE = 1e-5  # largest |P(default) compiled - P(default) pipeline| allowed on the check rows
UNSEEN = "unseen-category"  # a value no encoder was fitted on (encoded as all zeros)
# Reference rows a check uses: they meet every category and a spread of numbers; more only lengthen a
# swap (the watcher thread holds the GIL while it checks: ~0.1 s a 1,000 rows here).
CHECK_SAMPLE_ROWS = 2_000


class NotCompilable(Exception):
    """The pipeline has a part this module does not compile (the message says which)."""


@dataclass(frozen=True)
class Imputed:
    """Numeric columns -> one output column each; a missing value (None/NaN) -> the fitted statistic."""

    names: tuple[str, ...]
    fill: np.ndarray  # shape (len(names), 1): the imputer's statistics_
    start: int

    @property
    def width(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class OneHot:
    """One category column -> its encoder's columns; ``lookup`` maps a value to its output column."""

    name: str
    lookup: dict  # value (str, or None where None is a fitted category) -> absolute column
    start: int
    width: int


@dataclass(frozen=True)
class CompiledPipeline:
    numeric: tuple[Imputed, ...]
    categorical: tuple[OneHot, ...]
    width: int
    classifier: object

    def matrix(self, columns: dict[str, list]) -> np.ndarray:
        """The classifier's input, as the ColumnTransformer gives it, from one list per feature.

        Numbers are int/float/None, categories str/None: what ``rows.columns_of`` gives.
        """
        n = len(next(iter(columns.values())))
        x = np.zeros((n, self.width))
        for block in self.numeric:
            values = np.array([columns[name] for name in block.names], dtype=float)  # None -> NaN
            x[:, block.start : block.start + block.width] = np.where(np.isnan(values), block.fill, values).T
        for block in self.categorical:
            codes = np.fromiter(
                (block.lookup.get(v, -1) for v in columns[block.name]), dtype=np.intp, count=n
            )
            known = codes >= 0  # an unseen value stays all zeros (handle_unknown="ignore")
            x[np.flatnonzero(known), codes[known]] = 1.0
        return x

    def predict_proba(self, columns: dict[str, list]) -> np.ndarray:
        """P(class 1) per row."""
        return self.classifier.predict_proba(self.matrix(columns))[:, 1]


def _is_nan(value) -> bool:
    return isinstance(value, float) and value != value


def _imputed(imputer: SimpleImputer, names: list[str], start: int) -> Imputed:
    if not _is_nan(imputer.missing_values) or imputer.add_indicator:
        raise NotCompilable(
            f"numeric columns {names}: only SimpleImputer(missing_values=nan) without indicator columns is compiled"
        )
    statistics = np.asarray(imputer.statistics_)
    if statistics.dtype.kind not in "fiu" or len(statistics) != len(names) or np.isnan(statistics).any():
        raise NotCompilable(f"numeric columns {names}: the imputer has no numeric statistic for every column")
    return Imputed(tuple(names), statistics.astype(float).reshape(-1, 1), start)


def _one_hot(transformer, names: list[str], start: int) -> list[OneHot]:
    steps = [step for _, step in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]
    imputer = steps[0] if len(steps) == 2 and isinstance(steps[0], SimpleImputer) else None
    encoder = steps[-1]
    if len(steps) != (1 if imputer is None else 2) or not isinstance(encoder, OneHotEncoder):
        parts = " -> ".join(type(step).__name__ for step in steps)
        raise NotCompilable(
            f"columns {names} go through {parts}: only SimpleImputer (numbers) or "
            "[SimpleImputer ->] OneHotEncoder (categories) is compiled"
        )
    if (
        encoder.handle_unknown not in ("ignore", "infrequent_if_exist")
        or encoder.drop_idx_ is not None
        or getattr(encoder, "_infrequent_enabled", False)
        or np.dtype(encoder.dtype) != np.float64
    ):
        raise NotCompilable(
            f"category columns {names}: the encoder drops, groups infrequent or rejects unknown categories"
        )
    if imputer is not None and (imputer.add_indicator or len(imputer.statistics_) != len(names)):
        raise NotCompilable(f"category columns {names}: the imputer adds indicator columns")
    blocks = []
    for j, (name, categories) in enumerate(zip(names, encoder.categories_, strict=True)):
        if not all(c is None or isinstance(c, str) for c in categories):
            raise NotCompilable(f"category column {name!r}: fitted on values that are not strings")
        lookup = {c: start + i for i, c in enumerate(categories)}
        # Requests carry str or None, never NaN: an imputer of NaN changes nothing (None stays None and
        # is a category of its own, as in scikit-learn); one of None or a string fills that value.
        if imputer is not None and not _is_nan(imputer.missing_values):
            lookup[imputer.missing_values] = lookup.get(imputer.statistics_[j], -1)
        blocks.append(OneHot(name, lookup, start, len(categories)))
        start += len(categories)
    return blocks


def compile_pipeline(model, names: Sequence[str]) -> CompiledPipeline:
    """The fitted ``Pipeline([ColumnTransformer, classifier])`` as NumPy; ``NotCompilable`` otherwise."""
    if not isinstance(model, Pipeline) or len(model.steps) != 2:
        raise NotCompilable(f"{type(model).__name__} is not a two-step Pipeline (preprocess, classifier)")
    preprocess, classifier = model.steps[0][1], model.steps[1][1]
    if not isinstance(preprocess, ColumnTransformer) or getattr(preprocess, "sparse_output_", False):
        raise NotCompilable(f"the first step ({type(preprocess).__name__}) is not a dense ColumnTransformer")
    if hasattr(classifier, "feature_names_in_") or not hasattr(classifier, "predict_proba"):
        raise NotCompilable(
            f"the classifier ({type(classifier).__name__}) does not take a plain float matrix"
        )
    numeric, categorical, start = [], [], 0
    for label, transformer, columns in preprocess.transformers_:
        if isinstance(transformer, str) and transformer == "drop" or len(columns) == 0:
            continue  # contributes no output column
        if not (isinstance(columns, list) and all(isinstance(c, str) and c in names for c in columns)):
            raise NotCompilable(
                f"transformer {label!r} selects columns {columns!r}, not schema feature names"
            )
        if isinstance(transformer, str):
            raise NotCompilable(f"transformer {label!r} is {transformer!r}")
        try:
            if isinstance(transformer, SimpleImputer):
                block = _imputed(transformer, columns, start)
                numeric.append(block)
                start += block.width
            else:
                blocks = _one_hot(transformer, columns, start)
                categorical.extend(blocks)
                start += sum(b.width for b in blocks)
        except NotCompilable as exc:
            raise NotCompilable(f"transformer {label!r}: {exc}") from None
    if start != getattr(classifier, "n_features_in_", None):
        raise NotCompilable(
            f"the preprocessing gives {start} columns, the classifier takes {classifier.n_features_in_}"
        )
    return CompiledPipeline(tuple(numeric), tuple(categorical), start, classifier)


def frame_columns(frame: pd.DataFrame, schema: FeatureSchema) -> dict[str, list]:
    """A frame as one list per feature, the values ``rows.columns_of`` gives (NaN/None -> None)."""
    x = features_only(frame, schema)
    return {name: x[name].astype(object).where(x[name].notna(), None).tolist() for name in schema.names}


def check_rows(frame: pd.DataFrame, schema: FeatureSchema, seed: int = 0) -> pd.DataFrame:
    """The rows a compiled model is checked on: ``frame``, and a copy of it with a fifth of the cells
    missing and a third of the categories never seen in training (seeded)."""
    rng = np.random.default_rng(seed)
    base = features_only(frame, schema).reset_index(drop=True)
    holes = base.copy()
    for name in schema.names:
        gone = rng.random(len(holes)) < 0.2
        holes[name] = holes[name].where(~gone, np.nan if schema[name].is_numeric else None)
        if not schema[name].is_numeric:
            holes.loc[rng.random(len(holes)) < 0.33, name] = UNSEEN
    empty = base.iloc[:1].copy()  # one row with every value missing
    for name in schema.names:
        empty[name] = np.nan if schema[name].is_numeric else None
    return features_only(pd.concat([base, holes, empty], ignore_index=True), schema)


def largest_difference(compiled: CompiledPipeline, model, rows: pd.DataFrame, schema: FeatureSchema) -> float:
    """max |P compiled - P pipeline| on ``rows`` (NaN when the compiled path gives anything non-finite)."""
    expected = model.predict_proba(features_only(rows, schema))[:, 1]
    got = compiled.predict_proba(frame_columns(rows, schema))
    if got.shape != expected.shape or not np.isfinite(got).all():
        return float("nan")
    return float(np.max(np.abs(got - expected)))


def compile_checked(
    model, schema: FeatureSchema, sample: pd.DataFrame, what: str
) -> tuple[CompiledPipeline | None, str]:
    """The compiled model if it matches the pipeline on ``check_rows(sample)``, and why (or why not).

    Never raises: whatever goes wrong here, the version is still served, by the pipeline.
    """
    try:
        compiled = compile_pipeline(model, schema.names)
    except NotCompilable as exc:
        return None, f"not compiled: {exc}"
    except Exception as exc:  # an estimator without the attributes we read: the pipeline serves
        return None, f"not compiled: {type(exc).__name__}: {exc}"
    rows = check_rows(sample, schema)
    try:
        difference = largest_difference(compiled, model, rows, schema)
    except Exception as exc:
        return None, f"compiled, but the check on {len(rows):,} rows failed: {type(exc).__name__}: {exc}"
    if not difference <= TOLERANCE:  # NaN fails too
        return None, (
            f"compiled, but its probabilities differ from the pipeline's by {difference:.3g} "
            f"(> {TOLERANCE:g}) on {len(rows):,} rows"
        )
    return compiled, (
        f"preprocessing compiled to NumPy; max |Δp| {difference:.1g} vs the sklearn pipeline on {len(rows):,} rows "
        f"({what}, with missing values and unseen categories)"
    )
