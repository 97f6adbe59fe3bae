"""Data sources: the synthetic loan-default generator, a bundled real dataset, or a CSV file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.features import LABEL, LOAN_SCHEMA

SOURCES = ("synthetic", "breast_cancer", "csv")


class DataError(ValueError):
    """Bad input data or parameters; the message says what is wrong and what to do."""


def generate_loans(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """Synthetic loan applications with a label from a known non-linear rule plus noise."""
    if n_rows <= 0:
        raise DataError(f"n_rows must be positive, got {n_rows}")
    rng = np.random.default_rng(seed)
    age = rng.normal(41, 12, n_rows).clip(18, 85).round()
    income = rng.lognormal(np.log(58_000), 0.55, n_rows).clip(5_000, 1_500_000).round(-2)
    loan_amount = (income * rng.beta(2, 6, n_rows) * 1.2).clip(1_000, 150_000).round(-2)
    loan_term = rng.choice([12, 24, 36, 48, 60, 84], n_rows, p=[0.08, 0.17, 0.35, 0.15, 0.2, 0.05])
    credit_score = rng.normal(680, 70, n_rows).clip(300, 850).round()
    debt_to_income = rng.gamma(4, 0.085, n_rows).clip(0, 1.8).round(3)
    employment_years = rng.exponential(6, n_rows).clip(0, (age - 16).clip(0, 60)).round(1)
    num_credit_lines = rng.poisson(7, n_rows).clip(0, 50)
    frame = pd.DataFrame(
        {
            "age": age.astype(int),
            "income": income,
            "loan_amount": loan_amount,
            "loan_term_months": loan_term.astype(int),
            "credit_score": credit_score.astype(int),
            "debt_to_income": debt_to_income,
            "employment_years": employment_years,
            "num_credit_lines": num_credit_lines.astype(int),
            "region": rng.choice(LOAN_SCHEMA["region"].categories, n_rows, p=[0.2, 0.25, 0.2, 0.2, 0.15]),
            "home_ownership": rng.choice(LOAN_SCHEMA["home_ownership"].categories, n_rows, p=[0.4, 0.2, 0.4]),
            "purpose": rng.choice(
                LOAN_SCHEMA["purpose"].categories, n_rows, p=[0.35, 0.15, 0.2, 0.1, 0.1, 0.1]
            ),
        }
    )
    frame[LABEL] = default_rule(frame, rng)
    return frame


def default_probability(frame: pd.DataFrame) -> np.ndarray:
    """The ground-truth rule: non-linear in score, debt load and payment burden, with interactions."""
    score = (frame["credit_score"].fillna(680) - 680) / 70
    dti = frame["debt_to_income"].fillna(0.34)
    burden = frame["loan_amount"] / frame["income"].fillna(58_000).clip(lower=5_000)
    tenure = frame["employment_years"].fillna(6)
    logit = (
        -1.6
        - 1.1 * score
        + 0.35 * np.square(np.minimum(score, 0))  # thin-file applicants: risk saturates
        + 3.0 * np.maximum(dti - 0.4, 0)
        + 1.2 * (burden > 0.35)
        - 0.08 * np.minimum(tenure, 10)
        + 0.6 * ((frame["purpose"] == "business") & (score < 0)).astype(float)
        + 0.4 * (frame["home_ownership"] == "rent").astype(float) * (dti > 0.5)
        + 0.15 * (frame["loan_term_months"] >= 60)
    )
    return 1 / (1 + np.exp(-logit.to_numpy(dtype=float)))


def default_rule(frame: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    return (rng.random(len(frame)) < default_probability(frame)).astype(int)


def load_breast_cancer_frame() -> pd.DataFrame:
    """scikit-learn's bundled Wisconsin breast-cancer set (569 rows): a real dataset shipped in a package."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.data.rename(columns=lambda c: c.replace(" ", "_"))
    # sklearn's target is 1 = benign; the positive class here is the malignant finding.
    frame[LABEL] = 1 - bunch.target.to_numpy()
    return frame


def load_csv(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file not found: {path} (pass an existing file with --csv-path)")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"could not read {path} as CSV: {exc}") from exc


def load_data(
    source: str = "synthetic", n_rows: int = 20_000, seed: int = 0, csv_path: str = ""
) -> pd.DataFrame:
    """Load ``n_rows`` from a source; real sources are subsampled (reproducibly) when larger."""
    if n_rows <= 0:
        raise DataError(f"n_rows must be positive, got {n_rows}")
    if source == "synthetic":
        return generate_loans(n_rows, seed)
    if source == "breast_cancer":
        frame = load_breast_cancer_frame()
    elif source == "csv":
        if not csv_path:
            raise DataError("source 'csv' needs a file: pass --csv-path PATH")
        frame = load_csv(csv_path)
    else:
        raise DataError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if len(frame) > n_rows:
        frame = frame.sample(n=n_rows, random_state=seed).reset_index(drop=True)
    return frame
