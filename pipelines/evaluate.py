"""Evaluation: overall classification metrics and the same metrics per slice (e.g. by region)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from pipelines.features import FeatureSchema
from pipelines.train import features_only

MIN_SLICE_ROWS = 30


def classification_metrics(y_true, y_pred, y_prob) -> dict[str, float]:
    y_true = np.asarray(y_true).astype(int)
    metrics = {
        "accuracy": accuracy_score(y_true, y_pred),
        "precision": precision_score(y_true, y_pred, zero_division=0),
        "recall": recall_score(y_true, y_pred, zero_division=0),
        "f1": f1_score(y_true, y_pred, zero_division=0),
        # AUC is undefined on one class; NaN would poison comparisons, so report 0.5 (no skill).
        "roc_auc": roc_auc_score(y_true, y_prob) if len(set(y_true)) > 1 else 0.5,
    }
    return {k: round(float(v), 5) for k, v in metrics.items()}


def evaluate_model(model, holdout: pd.DataFrame, schema: FeatureSchema) -> dict[str, float]:
    """Overall metrics plus ``slice_<feature>_<value>_<metric>`` for each slice with enough rows."""
    x, y = features_only(holdout, schema), holdout[schema.label].astype(int).to_numpy()
    prob = model.predict_proba(x)[:, 1]
    pred = (prob >= 0.5).astype(int)
    metrics = classification_metrics(y, pred, prob)
    if schema.slice_by:
        values = holdout[schema.slice_by].astype(str).to_numpy()
        for value in sorted(set(values)):
            mask = values == value
            if mask.sum() < MIN_SLICE_ROWS:
                continue
            sliced = classification_metrics(y[mask], pred[mask], prob[mask])
            for name in ("accuracy", "f1", "roc_auc"):
                metrics[f"slice_{schema.slice_by}_{value}_{name}"] = sliced[name]
    metrics["holdout_rows"] = float(len(holdout))
    return metrics
