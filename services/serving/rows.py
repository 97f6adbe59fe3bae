"""Request and response models for ``/predict``, generated from the one feature schema."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, create_model

from pipelines.features import LOAN_SCHEMA, Feature, FeatureSchema

MAX_ROWS = 1000


def field_for(feature: Feature):
    """Every feature must be present; ``null`` is allowed (the model imputes it).

    Categories are free strings: an unseen category is served (encoded as all-zeros by
    the model) and reaches the monitor, which is what flags it as drift.
    """
    if feature.kind == "category":
        kind = Annotated[str, Field(min_length=1, max_length=64)]
        hint = f"one of {', '.join(feature.categories)} (others are accepted and flagged as drift)"
    else:
        number = int if feature.kind == "int" else float
        kind = Annotated[number, Field(ge=feature.low, le=feature.high, allow_inf_nan=False)]
        hint = f"{feature.kind} in [{feature.low:g}, {feature.high:g}]"
    return (kind | None, Field(..., description=f"{feature.description}; {hint}; null if unknown"))


def row_model(schema: FeatureSchema) -> type[BaseModel]:
    fields = {f.name: field_for(f) for f in schema.features}
    return create_model("LoanRow", __config__=ConfigDict(extra="forbid", strict=False), **fields)


LoanRow = row_model(LOAN_SCHEMA)

EXAMPLE_ROW = {
    "age": 41, "income": 58000.0, "loan_amount": 12000.0, "loan_term_months": 36, "credit_score": 690,
    "debt_to_income": 0.31, "employment_years": 4.5, "num_credit_lines": 7, "region": "north",
    "home_ownership": "rent", "purpose": "car",
}  # fmt: skip


class Prediction(BaseModel):
    request_id: str = Field(
        description="Id of this row's prediction; send delayed labels to the monitor with it"
    )
    prediction: int = Field(description="1 = predicted default")
    probability: float = Field(description="P(default)")
    model: str
    model_version: str


def columns_of(rows: Sequence[BaseModel], schema: FeatureSchema) -> dict[str, list]:
    """Validated rows as one list of values per feature (cheaper than a ``model_dump`` per row)."""
    return {name: [getattr(row, name) for row in rows] for name in schema.names}


def model_frame(columns: dict[str, list], schema: FeatureSchema) -> pd.DataFrame:
    """The model's input built once per batch, the same as ``pipelines.train.features_only`` gives:
    numeric features as float64 (``None`` -> NaN), categories as objects (``None`` stays ``None``)."""
    return pd.DataFrame(
        {f.name: np.array(columns[f.name], dtype=float if f.is_numeric else object) for f in schema.features},
        copy=False,
    )
