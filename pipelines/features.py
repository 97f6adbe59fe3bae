"""The feature schema: defined once, used by validation, serving and monitoring.

(Named ``features`` rather than ``schema``: a module called ``schema`` shadows a
package that BentoML imports.)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

LABEL = "default"


@dataclass(frozen=True)
class Feature:
    name: str
    kind: Literal["int", "float", "category"]
    description: str
    low: float | None = None
    high: float | None = None
    categories: tuple[str, ...] = ()
    nullable: bool = True  # the model imputes; serving accepts null

    @property
    def is_numeric(self) -> bool:
        return self.kind != "category"


@dataclass(frozen=True)
class FeatureSchema:
    name: str
    features: tuple[Feature, ...]
    label: str = LABEL
    slice_by: str | None = None  # categorical feature used for per-slice metrics

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.features if f.is_numeric]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.features if not f.is_numeric]

    def __getitem__(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)


LOAN_SCHEMA = FeatureSchema(
    name="loan-default",
    slice_by="region",
    features=(
        Feature("age", "int", "Applicant age in years", 18, 100),
        Feature("income", "float", "Annual income (USD)", 0, 2_000_000),
        Feature("loan_amount", "float", "Requested principal (USD)", 500, 200_000),
        Feature("loan_term_months", "int", "Term of the loan in months", 6, 120),
        Feature("credit_score", "int", "FICO-style score", 300, 850),
        Feature("debt_to_income", "float", "Monthly debt / monthly income", 0, 2),
        Feature("employment_years", "float", "Years with current employer", 0, 60),
        Feature("num_credit_lines", "int", "Open credit lines", 0, 60),
        Feature(
            "region", "category", "Sales region", categories=("north", "south", "east", "west", "central")
        ),
        Feature("home_ownership", "category", "Housing status", categories=("rent", "own", "mortgage")),
        Feature(
            "purpose",
            "category",
            "Stated purpose of the loan",
            categories=("debt_consolidation", "home_improvement", "car", "education", "business", "medical"),
        ),
    ),
)


@cache
def breast_cancer_schema() -> FeatureSchema:
    """Schema of scikit-learn's bundled breast-cancer set: numeric, the observed range plus one span of headroom."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).data
    features = []
    for col in frame.columns:
        low, high = float(frame[col].min()), float(frame[col].max())
        span = (high - low) or 1.0
        features.append(
            Feature(col.replace(" ", "_"), "float", col, low=max(0.0, low - span), high=high + span)
        )
    return FeatureSchema(name="breast-cancer", features=tuple(features))


def schema_for_source(source: str) -> FeatureSchema:
    """Every source but the bundled breast-cancer set speaks the loan schema (a CSV must too)."""
    return breast_cancer_schema() if source == "breast_cancer" else LOAN_SCHEMA
