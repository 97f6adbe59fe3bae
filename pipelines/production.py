"""Production data for retraining: what serving saw, with the ground truth that came back.

The mix rule (one place, documented in docs/retraining.md):

- **training rows** = the latest ``n_rows`` *labelled* records the monitor holds, plus
  ``clean_rows`` fresh rows from the original (clean) distribution (default 20,000, as many
  as the first training had). The new model knows everything the old one knew plus what
  production shows now, so the gate, which scores both on a holdout of this mix, compares
  like with like. (With production rows alone, a few thousand rows lose to a champion trained
  on 20,000, and under a pure covariate shift the gate rightly keeps the champion: measured.)
- **drift reference** of the new version = the latest ``drift_reference_rows`` records served,
  labelled or not: the new model's "normal" is today's traffic, so a shift that has been
  retrained on stops counting as drift. With ``since`` (the retrainer passes the alert's start),
  only records received after it count, and this step waits up to ``wait_seconds`` for
  ``drift_reference_rows`` of them: a reference that mixed the old regime in would keep the drift alive
  (measured: 1,200 rows taken right away were 30 % pre-incident, and v2 still drifted).
  After the wait it takes the latest rows, whatever they are, and says so.
- fewer than ``min_rows`` labelled records -> the run fails here, saying how to get labels.

The clean rule: both are read with ``clean_only=true``, so the monitor leaves out every record
received in a window that failed data quality (a unit change, a missing field, a flood of
rejected rows) and every record it has not judged yet: a broken feed never trains a model or
becomes its drift reference (docs/retraining.md, docs/data-quality.md).
"""

from __future__ import annotations

import time

import httpx
import pandas as pd

from pipelines.data import DataError, generate_loans
from pipelines.features import LABEL, LOAN_SCHEMA, FeatureSchema


def fetch_records(
    monitor_url: str, limit: int, labelled: bool, since: float | None = None, timeout: float = 30.0
) -> list[dict]:
    """The latest ``limit`` clean records (received at or after ``since``) from the monitor's ``GET /api/records``.

    Clean: judged by the monitor, and not from a window that failed data quality (the clean rule).
    """
    url = f"{monitor_url.rstrip('/')}/api/records"
    params = {"limit": limit, "labelled": labelled, "clean_only": True, **({"since": since} if since else {})}
    try:
        response = httpx.get(url, params=params, timeout=timeout)
        response.raise_for_status()
        return response.json()["records"]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        raise DataError(
            f"could not read production records from the monitor at {url}: {exc} "
            "(is the monitor running? `sandbox status`)"
        ) from exc


def records_frame(records: list[dict], schema: FeatureSchema = LOAN_SCHEMA) -> pd.DataFrame:
    """Records as a frame with the schema's columns (and the label where one came back)."""
    frame = pd.DataFrame.from_records([r["features"] for r in records], columns=schema.names)
    frame[schema.label] = pd.array([r.get("label") for r in records], dtype="Int64")
    return frame


def recent_records(
    monitor_url: str, rows: int, since: float, wait_seconds: float, poll_seconds: float, fetch=fetch_records
) -> list[dict]:
    """``rows`` records received after ``since``, waiting for them; after the wait, the latest ``rows``."""
    if since <= 0:
        return fetch(monitor_url, rows, False)
    deadline = time.monotonic() + wait_seconds
    while True:
        found = fetch(monitor_url, rows, False, since)
        if len(found) >= rows:
            return found
        if time.monotonic() >= deadline:
            print(
                f"only {len(found)} records arrived after {since:.0f} in {wait_seconds:.0f}s; the drift reference "
                f"is the latest {rows} records, some from before (drift may persist)"
            )
            return fetch(monitor_url, rows, False)
        print(f"drift reference: {len(found)} of {rows} records since the alert; waiting for traffic")
        time.sleep(poll_seconds)


def production_data(
    monitor_url: str,
    n_rows: int = 5_000,
    min_rows: int = 200,
    clean_rows: int = 2_000,
    drift_reference_rows: int = 2_000,
    seed: int = 0,
    since: float = 0.0,
    wait_seconds: float = 300.0,
    poll_seconds: float = 2.0,
    fetch=fetch_records,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(training rows, drift reference)`` by the mix rule in this module's docstring."""
    labelled = records_frame(fetch(monitor_url, n_rows, True))
    if len(labelled) < min_rows:
        raise DataError(
            f"only {len(labelled)} labelled production records at {monitor_url}; retraining needs "
            f"at least {min_rows}: send traffic with labels (`sandbox traffic --label-delay 5`) "
            "or lower SANDBOX_RETRAIN_MIN_PRODUCTION_ROWS"
        )
    labelled[LABEL] = labelled[LABEL].astype(int)
    clean = generate_loans(clean_rows, seed) if clean_rows > 0 else None
    training = pd.concat([labelled, clean], ignore_index=True) if clean is not None else labelled
    reference = records_frame(
        recent_records(monitor_url, drift_reference_rows, since, wait_seconds, poll_seconds, fetch)
    )
    return training.sample(frac=1.0, random_state=seed).reset_index(drop=True), reference
