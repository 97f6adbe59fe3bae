import pandas as pd
import pytest

from pipelines.data import generate_loans
from pipelines.evaluate import evaluate_model
from pipelines.features import LOAN_SCHEMA
from pipelines.scenarios import apply_scenario
from pipelines.train import features_only, split, train_model

# Stated floor for the default model on clean synthetic data (measured ~0.82 at 20k rows).
CLEAN_ROC_AUC_FLOOR = 0.78


@pytest.mark.slow  # trains on 20,000 rows
def test_clean_data_model_quality_floor():
    train, holdout = split(generate_loans(8_000, seed=11), LOAN_SCHEMA)
    metrics = evaluate_model(train_model(train, LOAN_SCHEMA), holdout, LOAN_SCHEMA)
    assert metrics["roc_auc"] >= CLEAN_ROC_AUC_FLOOR
    assert metrics["accuracy"] > 1 - holdout["default"].mean()  # beats always-predict-majority
    assert {"slice_region_north_roc_auc", "slice_region_central_f1"} <= set(metrics)


def test_model_serves_unseen_categories_and_missing_values():
    train, holdout = split(generate_loans(3_000, seed=2), LOAN_SCHEMA)
    model = train_model(train, LOAN_SCHEMA)
    odd = apply_scenario(apply_scenario(holdout, "new_category", 3.0), "missing_values", 1.0)
    prob = model.predict_proba(features_only(odd, LOAN_SCHEMA))[:, 1]
    assert len(prob) == len(odd) and pd.Series(prob).between(0, 1).all()


@pytest.mark.slow  # trains on 20,000 rows
def test_weak_hyperparameters_give_a_weaker_model():
    train, holdout = split(generate_loans(6_000, seed=5), LOAN_SCHEMA)
    strong = evaluate_model(train_model(train, LOAN_SCHEMA), holdout, LOAN_SCHEMA)["roc_auc"]
    weak = evaluate_model(train_model(train, LOAN_SCHEMA, max_iter=1, max_depth=1), holdout, LOAN_SCHEMA)[
        "roc_auc"
    ]
    assert weak < strong - 0.05


def test_split_is_stratified_disjoint_complete_and_seeded():
    frame = generate_loans(2_001, seed=3)
    train, holdout = split(frame, LOAN_SCHEMA, holdout_fraction=0.25, seed=4)
    assert len(train) + len(holdout) == len(frame)
    assert set(train.index).isdisjoint(holdout.index) and set(train.index) | set(holdout.index) == set(
        frame.index
    )
    for value, rows in frame["default"].value_counts().items():  # each label value gives its share
        assert (holdout["default"] == value).sum() == round(0.25 * rows)
    again, _ = split(frame, LOAN_SCHEMA, holdout_fraction=0.25, seed=4)
    other, _ = split(frame, LOAN_SCHEMA, holdout_fraction=0.25, seed=5)
    assert list(again.index) == list(train.index) and list(other.index) != list(train.index)
    assert list(train.index) != sorted(train.index)  # shuffled: no order of the source leaks into training


def test_split_keeps_a_rare_label_on_both_sides():
    frame = generate_loans(200, seed=1).assign(default=0)
    frame.iloc[:2, frame.columns.get_loc("default")] = 1  # two positives: one each side
    train, holdout = split(frame, LOAN_SCHEMA, holdout_fraction=0.25, seed=0)
    assert train["default"].sum() == 1 and holdout["default"].sum() == 1
