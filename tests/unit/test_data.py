import numpy as np
import pandas as pd
import pytest

from pipelines.data import DataError, generate_loans, load_data
from pipelines.features import LABEL, LOAN_SCHEMA, breast_cancer_schema
from pipelines.scenarios import COVARIATE_SHIFT, SCENARIOS, UNIT_CHANGE, apply_scenario
from pipelines.validate import DataValidationError, check_frame, validate_frame


@pytest.fixture(scope="module")
def loans():
    return generate_loans(5_000, seed=7)


def test_generator_is_reproducible_by_seed():
    pd.testing.assert_frame_equal(generate_loans(500, seed=3), generate_loans(500, seed=3))
    assert not generate_loans(500, seed=3).equals(generate_loans(500, seed=4))


def test_generator_fits_its_schema_with_a_plausible_default_rate(loans):
    assert list(loans.columns) == LOAN_SCHEMA.names + [LABEL]
    report = validate_frame(loans, LOAN_SCHEMA)
    assert report.ok and report.warnings == []
    assert 0.15 < loans[LABEL].mean() < 0.45
    for name in LOAN_SCHEMA.categorical:
        assert set(loans[name]) == set(LOAN_SCHEMA[name].categories)


def test_label_follows_the_rule(loans):
    # The rule says a low score and a high debt load raise default risk.
    risky = (loans.credit_score < 620) & (loans.debt_to_income > 0.5)
    safe = (loans.credit_score > 740) & (loans.debt_to_income < 0.3)
    assert loans[risky][LABEL].mean() > 2 * loans[safe][LABEL].mean()


def test_none_scenario_changes_nothing(loans):
    pd.testing.assert_frame_equal(apply_scenario(loans, "none"), loans)


@pytest.mark.parametrize("severity", [0.5, 1.0])
def test_covariate_shift_moves_the_named_features_by_the_stated_amount(loans, severity):
    drifted = apply_scenario(loans, "covariate_shift", severity)
    for col, direction in COVARIATE_SHIFT.items():
        moved = drifted[col].mean() - loans[col].mean()
        expected = direction * severity * loans[col].std()
        assert moved == pytest.approx(expected, rel=0.1), col
    assert check_frame(drifted, LOAN_SCHEMA).ok, "shifted values must stay inside the schema's ranges"
    pd.testing.assert_series_equal(drifted[LABEL], loans[LABEL])


def test_new_category_introduces_a_value_outside_the_schema(loans):
    drifted = apply_scenario(loans, "new_category", 1.0, seed=1)
    unseen = set(drifted.region) - set(LOAN_SCHEMA["region"].categories)
    assert unseen == {"overseas"}
    assert (drifted.region == "overseas").mean() == pytest.approx(0.3, abs=0.03)
    report = validate_frame(drifted, LOAN_SCHEMA)  # warned, not rejected: retraining must accept it
    assert any("overseas" in w for w in report.warnings)


def test_missing_values_blanks_the_stated_fraction(loans):
    drifted = apply_scenario(loans, "missing_values", 1.0, seed=1)
    for col in ("income", "employment_years", "credit_score"):
        assert drifted[col].isna().mean() == pytest.approx(0.3, abs=0.03)
    assert loans.isna().sum().sum() == 0


def test_concept_drift_changes_labels_not_features(loans):
    drifted = apply_scenario(loans, "concept_drift", 1.0, seed=1)
    pd.testing.assert_frame_equal(drifted[LOAN_SCHEMA.names], loans[LOAN_SCHEMA.names])
    good = loans.credit_score >= 700
    assert drifted[good][LABEL].mean() > loans[good][LABEL].mean() + 0.3
    assert (drifted[~good][LABEL] == loans[~good][LABEL]).all()


def test_label_bug_inverts_the_labels_of_one_region_only(loans):
    from pipelines.scenarios import LABEL_BUG

    col, value = LABEL_BUG
    drifted = apply_scenario(loans, "label_bug", 1.0, seed=1)
    pd.testing.assert_frame_equal(drifted[LOAN_SCHEMA.names], loans[LOAN_SCHEMA.names])
    north = loans[col] == value
    assert 0 < north.mean() < 0.5
    assert (drifted.loc[north, LABEL] == 1 - loans.loc[north, LABEL]).all()
    assert (drifted.loc[~north, LABEL] == loans.loc[~north, LABEL]).all()


def test_launch_label_bug_inverts_the_labels_of_exactly_the_new_regions_rows(loans):
    from pipelines.scenarios import NEW_CATEGORY

    col, value = NEW_CATEGORY
    drifted = apply_scenario(loans, "launch_label_bug", 1.0, seed=1)
    launched = drifted[col] == value
    assert launched.mean() == pytest.approx(0.3, abs=0.03)
    assert (drifted.loc[launched, LABEL] == 1 - loans.loc[launched, LABEL]).all()
    assert (drifted.loc[~launched, LABEL] == loans.loc[~launched, LABEL]).all()
    # The same rows new_category moves, with the same seed: the launch's traffic is that scenario.
    assert (apply_scenario(loans, "new_category", 1.0, seed=1)[col] == value).equals(launched)
    others = [c for c in LOAN_SCHEMA.names if c != col]
    pd.testing.assert_frame_equal(drifted[others], loans[others])


def test_label_shift_raises_the_base_rate(loans):
    drifted = apply_scenario(loans, "label_shift", 1.0, seed=1)
    base = loans[LABEL].mean()
    assert drifted[LABEL].mean() == pytest.approx(base + (1 - base) * 0.5, abs=0.01)
    # P(x | y) unchanged by taking rows as they were, each at most once (repeats would trip duplicate_rows)
    assert not drifted.duplicated().any()
    assert (drifted[LABEL] == 1).sum() == (loans[LABEL] == 1).sum()
    assert len(drifted.merge(loans, how="inner")) == len(drifted)


@pytest.mark.parametrize("severity", [0.5, 1.0])
def test_unit_change_sends_income_in_thousands_on_the_stated_share_and_stays_in_range(loans, severity):
    drifted = apply_scenario(loans, "unit_change", severity, seed=1)
    (col, factor) = next(iter(UNIT_CHANGE.items()))
    changed = drifted[col] != loans[col]
    assert changed.mean() == pytest.approx(severity, abs=0.03)
    np.testing.assert_allclose(drifted.loc[changed, col], loans.loc[changed, col] * factor)
    assert drifted[col].median() < loans[col].median() / (10 if severity == 1.0 else 1)
    assert check_frame(drifted, LOAN_SCHEMA).ok, (
        "values in other units still pass the schema: serving accepts them"
    )
    unchanged = [c for c in loans.columns if c != col]
    pd.testing.assert_frame_equal(drifted[unchanged], loans[unchanged])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_works_on_any_loan_frame_and_keeps_it_trainable(loans, scenario):
    drifted = apply_scenario(loans.sample(800, random_state=0), scenario, 1.0)
    assert check_frame(drifted, LOAN_SCHEMA).ok


def test_scenario_errors_name_the_problem(loans):
    with pytest.raises(DataError, match="unknown scenario 'typo'"):
        apply_scenario(loans, "typo")
    with pytest.raises(DataError, match="severity must be between"):
        apply_scenario(loans, "covariate_shift", severity=-1)
    with pytest.raises(DataError, match="has no 'default' column"):
        apply_scenario(loans.drop(columns=[LABEL]), "label_shift")


def test_breast_cancer_is_a_real_bundled_dataset():
    frame = load_data("breast_cancer", n_rows=10_000)
    assert len(frame) == 569  # the whole Wisconsin set, shipped inside scikit-learn
    assert frame[LABEL].mean() == pytest.approx(212 / 569)
    assert validate_frame(frame, breast_cancer_schema()).ok


def test_csv_source_round_trip(tmp_path, loans):
    path = tmp_path / "loans.csv"
    loans.head(300).to_csv(path, index=False)
    frame = load_data("csv", n_rows=200, seed=1, csv_path=str(path))
    assert len(frame) == 200
    assert validate_frame(frame, LOAN_SCHEMA).ok


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "synthetic", "n_rows": 0}, "n_rows must be positive"),
        ({"source": "parquet"}, "unknown source 'parquet'"),
        ({"source": "csv"}, "needs a file"),
        ({"source": "csv", "csv_path": "/no/such.csv"}, "CSV file not found"),
    ],
)
def test_load_data_errors(kwargs, message):
    with pytest.raises(DataError, match=message):
        load_data(**kwargs)


def test_validation_lists_every_violation(loans):
    bad = loans.head(200).copy()
    bad.loc[0, "credit_score"] = 999
    bad["age"] = bad["age"].astype(object)
    bad.loc[1, "age"] = "forty"
    bad.loc[2, LABEL] = 3
    with pytest.raises(DataValidationError) as info:
        validate_frame(bad, LOAN_SCHEMA)
    text = str(info.value)
    assert "'credit_score': 1 value(s) outside [300, 850], e.g. 999" in text
    assert "'age' must be numeric" in text and "'forty'" in text
    assert "must be 0 or 1" in text


def test_validation_rejects_missing_columns_and_tiny_frames(loans):
    report = check_frame(loans.drop(columns=["income"]), LOAN_SCHEMA)
    assert report.errors and "missing column(s) income" in report.errors[0]
    assert any("at least 50" in e for e in check_frame(loans.head(10), LOAN_SCHEMA).errors)
    single = loans.head(100).assign(**{LABEL: 0})
    assert any("single class" in e for e in check_frame(single, LOAN_SCHEMA).errors)
    empty_col = loans.head(100).assign(income=np.nan)
    assert any("'income' has no values" in e for e in check_frame(empty_col, LOAN_SCHEMA).errors)
