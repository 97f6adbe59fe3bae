"""Training: one scikit-learn Pipeline (preprocessing + estimator), hyperparameters as arguments.

scikit-learn is imported inside ``build_model``, not at the top: ``split`` and ``features_only``
serve steps that run in their own process (validate-data, and evaluate before it unpickles the
model), and importing scikit-learn costs more than the whole validate-data step's work.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.features import FeatureSchema
from pipelines.hyperparams import DEFAULT_HYPERPARAMS


def split(frame: pd.DataFrame, schema: FeatureSchema, holdout_fraction: float = 0.25, seed: int = 0):
    """``(train, holdout)``, stratified on the label so both keep the base rate; seeded, in shuffled order.

    Each label value gives ``round(fraction * its rows)`` rows to the holdout (at least one of each
    value that has two or more rows), drawn by one seeded generator.
    """
    rng = np.random.default_rng(seed)
    labels = frame[schema.label].to_numpy()
    holdout_parts = []
    for value in pd.unique(labels):
        rows = np.flatnonzero(labels == value)
        n_holdout = int(round(holdout_fraction * len(rows)))
        if len(rows) > 1:
            n_holdout = min(max(n_holdout, 1), len(rows) - 1)
        holdout_parts.append(rng.choice(rows, size=n_holdout, replace=False))
    holdout_rows = np.concatenate(holdout_parts)
    train_rows = np.setdiff1d(np.arange(len(frame)), holdout_rows)
    return frame.iloc[rng.permutation(train_rows)], frame.iloc[rng.permutation(holdout_rows)]


def build_model(schema: FeatureSchema, **hyperparams):
    """The unfitted sklearn ``Pipeline``; hyperparameters not given take their defaults."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    params = {**DEFAULT_HYPERPARAMS, **hyperparams}
    transformers = [("numeric", SimpleImputer(strategy="median"), schema.numeric)]
    if schema.categorical:
        # Unknown categories encode as all zeros: a new value is served, not rejected, and the monitor sees it.
        categorical = make_pipeline(
            SimpleImputer(strategy="constant", fill_value="missing"),
            OneHotEncoder(handle_unknown="ignore", sparse_output=False),
        )
        transformers.append(("categorical", categorical, schema.categorical))
    return Pipeline(
        [
            ("preprocess", ColumnTransformer(transformers)),
            ("classifier", HistGradientBoostingClassifier(random_state=0, **params)),
        ]
    )


def features_only(frame: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """The model's input: numeric features as float (so a missing value is NaN, never a type error)."""
    out = frame[schema.names].copy()
    out[schema.numeric] = out[schema.numeric].astype(float)
    for name in schema.categorical:
        out[name] = out[name].astype(object).where(out[name].notna(), None)
    return out


def train_model(frame: pd.DataFrame, schema: FeatureSchema, **hyperparams):
    """A fitted sklearn ``Pipeline``."""
    model = build_model(schema, **hyperparams)
    model.fit(features_only(frame, schema), frame[schema.label].astype(int))
    return model
