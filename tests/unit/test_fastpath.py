"""The NumPy path gives the sklearn pipeline's probabilities; anything it does not know is left to the pipeline."""

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pipelines.data import generate_loans
from pipelines.features import LOAN_SCHEMA
from pipelines.scenarios import apply_scenario
from pipelines.train import build_model, features_only, train_model
from services.serving.fastpath import TOLERANCE, UNSEEN, check_rows, compile_checked, compile_pipeline
from services.serving.model_store import LoadedModel, example_rows
from services.serving.rows import LoanRow, columns_of

NUMERIC, CATEGORICAL = LOAN_SCHEMA.numeric, LOAN_SCHEMA.categorical


def with_holes(frame: pd.DataFrame, seed: int, share: float = 0.15) -> pd.DataFrame:
    """A fifth or so of the cells of every column missing (categories as None, as serving sends them)."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    for name in LOAN_SCHEMA.names:
        out[name] = out[name].astype(float if LOAN_SCHEMA[name].is_numeric else object)
        out.loc[rng.random(len(out)) < share, name] = np.nan if LOAN_SCHEMA[name].is_numeric else None
    return out


@pytest.fixture(scope="module")
def clean_model():
    """Trained on complete rows: no category has a missing value it knows."""
    return train_model(generate_loans(2_000, seed=3), LOAN_SCHEMA, max_iter=40)


@pytest.fixture(scope="module")
def holey_model():
    """Trained with missing values everywhere: None is a fitted category of each category column."""
    return train_model(with_holes(generate_loans(2_000, seed=4), seed=4), LOAN_SCHEMA, max_iter=40)


def request_columns(frame: pd.DataFrame) -> dict[str, list]:
    """What /predict hands the model: the rows validated by pydantic, then one list per feature."""
    rows = [LoanRow.model_validate(row) for row in example_rows(frame[LOAN_SCHEMA.names])]
    return columns_of(rows, LOAN_SCHEMA)


def odd_frame(seed: int) -> pd.DataFrame:
    """Seeded rows with missing values, unseen categories and missing categories."""
    frame = apply_scenario(generate_loans(400, seed=seed), "new_category", 3.0)
    return with_holes(apply_scenario(frame, "missing_values", 1.0), seed=seed)


@pytest.mark.parametrize("fixture", ["clean_model", "holey_model"])
@pytest.mark.parametrize("seed", [21, 22])
def test_compiled_path_equals_the_pipeline(request, fixture, seed):
    model = request.getfixturevalue(fixture)
    frame = odd_frame(seed)
    assert frame[CATEGORICAL].isna().any().all() and frame[NUMERIC].isna().any().all()
    assert (~frame["region"].isin(LOAN_SCHEMA["region"].categories) & frame["region"].notna()).any()
    compiled = compile_pipeline(model, LOAN_SCHEMA.names)
    columns = request_columns(frame)
    x = features_only(frame, LOAN_SCHEMA)
    # The classifier's input is the ColumnTransformer's exactly, so the probabilities are too.
    np.testing.assert_array_equal(compiled.matrix(columns), model.named_steps["preprocess"].transform(x))
    expected = model.predict_proba(x)[:, 1]
    np.testing.assert_allclose(compiled.predict_proba(columns), expected, rtol=0, atol=TOLERANCE)


def test_a_missing_category_is_its_own_category_when_training_saw_one(clean_model, holey_model):
    """scikit-learn's SimpleImputer(missing_values=nan) leaves None alone: it is encoded, not imputed."""
    encoder = holey_model.named_steps["preprocess"].named_transformers_["categorical"][-1]
    assert all(cats[-1] is None for cats in encoder.categories_)
    row = {**request_columns(generate_loans(1, seed=1)), "region": [None]}
    for model in (clean_model, holey_model):
        frame = features_only(pd.DataFrame(row), LOAN_SCHEMA)
        expected = model.predict_proba(frame)[:, 1]
        assert compile_pipeline(model, LOAN_SCHEMA.names).predict_proba(row) == pytest.approx(
            expected, abs=1e-12
        )


def test_check_rows_hold_missing_values_and_unseen_categories_and_are_seeded():
    sample = generate_loans(50, seed=8)
    rows = check_rows(sample, LOAN_SCHEMA)
    assert len(rows) == 2 * 50 + 1 and rows.iloc[-1].isna().all()
    assert rows[NUMERIC].isna().any().all() and rows[CATEGORICAL].isna().any().all()
    assert (rows[CATEGORICAL] == UNSEEN).any().all()
    pd.testing.assert_frame_equal(rows, check_rows(sample, LOAN_SCHEMA))


def test_a_matching_model_is_served_by_numpy_and_says_so(holey_model):
    fast, reason = compile_checked(holey_model, LOAN_SCHEMA, generate_loans(100, seed=5), "a sample")
    assert fast is not None
    assert "compiled to NumPy" in reason and "201 rows" in reason and "a sample" in reason
    loaded = LoadedModel("m", "1", "r", "champion", holey_model, [], schema=LOAN_SCHEMA, fast=fast,
                         inference_reason=reason)  # fmt: skip
    assert loaded.describe()["inference"] == "numpy" and loaded.describe()["inference_reason"] == reason
    frame = odd_frame(30)
    np.testing.assert_allclose(
        loaded.predict_columns(request_columns(frame)),
        loaded.predict_proba(features_only(frame, LOAN_SCHEMA)),
        rtol=0, atol=TOLERANCE,
    )  # fmt: skip


class ShiftingImputer(SimpleImputer):
    """Looks like an imputer, but transforms differently: only the check can tell."""

    def transform(self, X):
        return super().transform(X) + 1.0


def categorical(**encoder):
    return make_pipeline(
        SimpleImputer(strategy="constant", fill_value="missing"),
        OneHotEncoder(**{"handle_unknown": "ignore", "sparse_output": False, **encoder}),
    )


def variant(numeric=None, category=None, classifier=None, remainder="drop", numeric_columns=NUMERIC):
    transformers = [("numeric", numeric or SimpleImputer(strategy="median"), numeric_columns)]
    transformers.append(("categorical", category or categorical(), CATEGORICAL))
    return make_pipeline(
        ColumnTransformer(transformers, remainder=remainder),
        classifier or HistGradientBoostingClassifier(max_iter=10, random_state=0),
    )


UNRECOGNISED = {
    "scaled numbers": (variant(numeric=make_pipeline(SimpleImputer(), StandardScaler())), "StandardScaler"),
    "dropped first category": (variant(category=categorical(drop="first")), "drops"),
    "unknown categories refused": (variant(category=categorical(handle_unknown="error")), "unknown"),
    "a column passed through": (
        variant(remainder="passthrough", numeric_columns=NUMERIC[1:]),
        "transformer 'remainder': columns ['age'] go through FunctionTransformer",
    ),
    "indicator columns": (variant(numeric=SimpleImputer(add_indicator=True)), "numeric columns"),
    "not a pipeline": (HistGradientBoostingClassifier(max_iter=10), "not a two-step Pipeline"),
    "check fails": (variant(numeric=ShiftingImputer(strategy="median")), "differ from the pipeline's"),
}


@pytest.mark.parametrize("case", UNRECOGNISED, ids=list(UNRECOGNISED))
def test_an_unrecognised_or_mismatching_model_is_served_by_the_pipeline(case):
    model, said = UNRECOGNISED[case]
    train = with_holes(generate_loans(600, seed=6), seed=6)
    x = features_only(train, LOAN_SCHEMA)
    if case == "not a pipeline":
        x = x[NUMERIC]
    model.fit(x, train["default"].astype(int))
    fast, reason = compile_checked(model, LOAN_SCHEMA, generate_loans(50, seed=7), "a sample")
    assert fast is None and said in reason, reason
    if case != "not a pipeline":
        loaded = LoadedModel(
            "m", "1", "r", "champion", model, [], schema=LOAN_SCHEMA, inference_reason=reason
        )
        assert loaded.inference == "sklearn"
        frame = generate_loans(30, seed=9)
        np.testing.assert_array_equal(
            loaded.predict_columns(request_columns(frame)),
            model.predict_proba(features_only(frame, LOAN_SCHEMA))[:, 1],
        )


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # unscaled inputs: fine here
def test_a_logistic_regression_on_the_same_preprocessing_compiles_too():
    """The classifier is the fitted one, whatever it is: only the preprocessing is compiled."""
    train = generate_loans(600, seed=12)
    model = variant(classifier=LogisticRegression(max_iter=200))
    model.fit(features_only(train, LOAN_SCHEMA), train["default"].astype(int))
    fast, reason = compile_checked(model, LOAN_SCHEMA, odd_frame(13), "odd rows")
    assert fast is not None, reason


def test_build_model_is_what_the_fast_path_knows():
    """If train.py's pipeline changes shape, this fails first (the service would fall back silently)."""
    train = generate_loans(600, seed=14)
    model = build_model(LOAN_SCHEMA, max_iter=5).fit(features_only(train, LOAN_SCHEMA), train["default"])
    assert compile_pipeline(model, LOAN_SCHEMA.names).width == model.steps[1][1].n_features_in_
