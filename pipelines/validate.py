"""Schema validation of a training frame: fail early, with a message that names the problem."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from pipelines.data import DataError
from pipelines.features import FeatureSchema

MIN_ROWS = 50


class DataValidationError(DataError):
    pass


@dataclass
class ValidationReport:
    rows: int
    errors: list[str] = field(default_factory=list)
    # Unseen categories and missing values are allowed (the model imputes and ignores
    # unknown categories) but reported, so that retraining on drifted data still works.
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_frame(frame: pd.DataFrame, schema: FeatureSchema, require_label: bool = True) -> ValidationReport:
    report = ValidationReport(rows=len(frame))
    expected = schema.names + ([schema.label] if require_label else [])
    missing = [c for c in expected if c not in frame.columns]
    if missing:
        report.errors.append(
            f"missing column(s) {', '.join(missing)}; the {schema.name} schema needs: {', '.join(expected)}"
        )
        return report
    if len(frame) < MIN_ROWS:
        report.errors.append(f"only {len(frame)} rows; at least {MIN_ROWS} are needed to train and evaluate")

    for feature in schema.features:
        col = frame[feature.name]
        if col.isna().all():
            report.errors.append(f"column {feature.name!r} has no values at all")
            continue
        nulls = int(col.isna().sum())
        if nulls:
            report.warnings.append(f"{feature.name}: {nulls} missing value(s) (imputed)")
        present = col.dropna()
        if feature.is_numeric:
            numbers = pd.to_numeric(present, errors="coerce")
            bad = present[numbers.isna()]
            if len(bad):
                report.errors.append(
                    f"column {feature.name!r} must be numeric; {len(bad)} value(s) are not, e.g. {bad.iloc[0]!r}"
                )
                continue
            out_of_range = numbers[(numbers < feature.low) | (numbers > feature.high)]
            if len(out_of_range):
                report.errors.append(
                    f"column {feature.name!r}: {len(out_of_range)} value(s) outside [{feature.low:g}, "
                    f"{feature.high:g}], e.g. {float(out_of_range.iloc[0]):g}"
                )
            if feature.kind == "int" and (numbers % 1 != 0).any():
                report.errors.append(f"column {feature.name!r} must hold whole numbers")
        else:
            unseen = sorted(set(present.astype(str)) - set(feature.categories))
            if unseen:
                report.warnings.append(f"{feature.name}: unseen categor(ies) {', '.join(unseen[:5])}")

    label = frame[schema.label]
    if label.isna().any():
        report.errors.append(f"label {schema.label!r} has {int(label.isna().sum())} missing value(s)")
    elif not set(pd.unique(label)) <= {0, 1}:
        report.errors.append(
            f"label {schema.label!r} must be 0 or 1, found {sorted(map(str, pd.unique(label)))[:5]}"
        )
    elif label.nunique() < 2:
        report.errors.append(f"label {schema.label!r} has a single class; both 0 and 1 are needed to train")
    return report


def validate_frame(frame: pd.DataFrame, schema: FeatureSchema) -> ValidationReport:
    """Raise ``DataValidationError`` listing every violation, or return the report (with warnings)."""
    report = check_frame(frame, schema)
    if not report.ok:
        raise DataValidationError(f"{schema.name} data failed validation: " + "; ".join(report.errors))
    return report
