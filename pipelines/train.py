"""Training: one scikit-learn Pipeline (preprocessing + estimator), hyperparameters as arguments."""

from __future__ import annotations

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder

from pipelines.features import FeatureSchema
from pipelines.params import DEFAULT_HYPERPARAMS


def split(frame: pd.DataFrame, schema: FeatureSchema, holdout_fraction: float = 0.25, seed: int = 0):
    """Train / holdout split, stratified on the label so both keep the base rate."""
    return train_test_split(
        frame, test_size=holdout_fraction, random_state=seed, stratify=frame[schema.label]
    )


def build_model(schema: FeatureSchema, **hyperparams) -> Pipeline:
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


def train_model(frame: pd.DataFrame, schema: FeatureSchema, **hyperparams) -> Pipeline:
    model = build_model(schema, **hyperparams)
    model.fit(features_only(frame, schema), frame[schema.label].astype(int))
    return model
