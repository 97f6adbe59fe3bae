"""Drift, live quality and the record store as plain functions: real Evidently, real SQLite, synthetic loans."""

import math
import threading

import numpy as np
import pandas as pd
import pytest

from pipelines.data import generate_loans
from pipelines.features import LOAN_SCHEMA
from pipelines.scenarios import apply_scenario
from sandbox.settings import Settings
from services.monitor.app import Monitor, MonitorConfig, MonitorMetrics
from services.monitor.drift import (
    DRIFT,
    INSUFFICIENT,
    NO_DRIFT,
    column_tests,
    drift_report_html,
    evaluate_drift,
    live_quality,
    prepare,
    preset_features,
    preset_mismatches,
    rows_of_latest_version,
    run_preset,
)
from services.monitor.store import RecordStore

WINDOW = 2_000


@pytest.fixture(scope="module")
def reference():
    return generate_loans(5_000, seed=1)  # the size the registry logs (REFERENCE_ROWS)


@pytest.fixture(scope="module")
def reference_std(reference):
    return {c: float(reference[c].std()) for c in ("credit_score", "debt_to_income")}


@pytest.fixture(scope="module")
def clean(reference):
    return evaluate_drift(generate_loans(WINDOW, seed=2), reference, LOAN_SCHEMA)


def test_clean_window_has_no_drift(clean):
    assert clean.verdict == NO_DRIFT
    assert clean.drift_share == 0
    assert clean.drifted_features == []
    assert set(clean.features) == set(LOAN_SCHEMA.names)
    # Reference above 1,000 rows: Evidently's distances, one suited to each declared type.
    assert clean.features["credit_score"].method.startswith("Wasserstein")
    assert clean.features["region"].method.startswith("Jensen-Shannon")


def test_covariate_shift_flags_score_and_debt(reference, reference_std, clean):
    current = apply_scenario(
        generate_loans(WINDOW, seed=3), "covariate_shift", 1.0, reference_std=reference_std
    )
    result = evaluate_drift(current, reference, LOAN_SCHEMA)
    assert result.verdict == DRIFT
    assert set(result.drifted_features) == {"credit_score", "debt_to_income"}
    assert result.drift_share > clean.drift_share
    assert result.drift_share == pytest.approx(2 / len(LOAN_SCHEMA.names))
    assert result.features["credit_score"].score > result.features["credit_score"].threshold
    assert "<html" in drift_report_html(current, reference, LOAN_SCHEMA)[:2000].lower()


def test_new_category_flags_region(reference):
    current = apply_scenario(generate_loans(WINDOW, seed=4), "new_category", 1.0)
    result = evaluate_drift(current, reference, LOAN_SCHEMA)
    assert result.drifted_features == ["region"]
    assert result.verdict == DRIFT


def test_too_few_rows_is_insufficient_without_flags(reference, reference_std):
    # Heavily drifted, but 100 rows is too few to judge: no verdict, no flags, no alarm.
    current = apply_scenario(generate_loans(100, seed=5), "covariate_shift", 3.0, reference_std=reference_std)
    result = evaluate_drift(current, reference, LOAN_SCHEMA, min_rows=200)
    assert result.verdict == INSUFFICIENT
    assert not result.sufficient
    assert result.features == {} and result.drifted_features == []
    assert result.drift_share is None
    # No reference needed to say so (the monitor does not fetch one for a small window).
    assert evaluate_drift(current, None, LOAN_SCHEMA, min_rows=200).verdict == INSUFFICIENT


def test_missing_values_are_flagged_by_missing_share(reference):
    current = apply_scenario(generate_loans(WINDOW, seed=6), "missing_values", 1.0)
    result = evaluate_drift(current, reference, LOAN_SCHEMA)
    assert set(result.drifted_features) == {"income", "employment_years", "credit_score"}
    assert result.features["income"].missing_share == pytest.approx(0.3, abs=0.05)
    assert result.features["income"].method.endswith("missing share")


def test_all_missing_column_does_not_break_the_evaluation(reference):
    current = generate_loans(WINDOW, seed=7)
    current["income"], current["purpose"] = np.nan, None
    result = evaluate_drift(current, reference, LOAN_SCHEMA)
    assert set(result.drifted_features) == {"income", "purpose"}
    assert math.isnan(result.features["income"].score)
    assert result.features["income"].missing_share == 1.0


def test_prepare_gives_floats_and_str_or_none_and_a_prepared_window_judges_the_same(reference):
    raw = apply_scenario(generate_loans(WINDOW, seed=8), "missing_values", 1.0)
    raw["age"] = raw["age"].astype(object)
    raw.loc[raw.index[:3], "age"] = ["junk", None, "41"]  # what a store row may hold
    raw["region"] = raw["region"].astype(object)
    raw.loc[raw.index[:2], "region"] = [7, float("nan")]
    raw.loc[raw.index[::4], "purpose"] = None
    window = prepare(raw, LOAN_SCHEMA)
    assert (
        window["age"].dtype == float and math.isnan(window["age"].iloc[0]) and window["age"].iloc[2] == 41.0
    )
    assert window["region"].iloc[0] == "7" and window["region"].iloc[1] is None
    assert {type(v) for v in window["purpose"]} <= {str, type(None)} and window["purpose"].isna().any()
    prepared = evaluate_drift(window, prepare(reference, LOAN_SCHEMA), LOAN_SCHEMA, prepared=True)
    assert prepared == evaluate_drift(raw, reference, LOAN_SCHEMA)
    assert prepared.drifted_features  # the scenario's missing values are seen either way


def test_small_reference_switches_to_p_value_tests():
    reference = generate_loans(800, seed=8)  # at most 1,000 reference rows: K-S and chi-square
    result = evaluate_drift(generate_loans(1_000, seed=9), reference, LOAN_SCHEMA)
    assert result.features["credit_score"].method == "K-S p_value"
    assert result.features["region"].method == "chi-square p_value"


@pytest.mark.parametrize(
    "scenario, reference_rows",
    [("none", 5_000), ("covariate_shift", 5_000), ("new_category", 5_000), ("missing_values", 5_000),
     ("covariate_shift", 800)],
)  # fmt: skip
def test_verdict_tests_are_the_presets(scenario, reference_rows, reference_std):
    # The verdict calls the preset's per-column tests without its plots; Report([DataDriftPreset])
    # must reach the same method, threshold, score and flag for every column (an Evidently
    # upgrade that changes its selection fails here), with the thresholds the monitor uses.
    thresholds = Settings().monitor_drift_thresholds
    reference = generate_loans(reference_rows, seed=1)
    current = apply_scenario(generate_loans(1_500, seed=11), scenario, 1.0, reference_std=reference_std)
    cur, ref = prepare(current, LOAN_SCHEMA), prepare(reference, LOAN_SCHEMA)
    ours = column_tests(cur, ref, LOAN_SCHEMA, thresholds)
    preset = preset_features(run_preset(current, reference, LOAN_SCHEMA, thresholds))
    assert set(ours) == set(preset) == set(LOAN_SCHEMA.names)
    assert preset_mismatches(ours, preset) == []  # method, threshold, flag, score (rel 1e-9)
    if scenario == "covariate_shift":
        assert ours["credit_score"].drifted
    if reference_rows > 1_000:  # distances: the configured threshold is the one applied
        assert ours["age"].threshold == thresholds.get("wasserstein", 0.1)


def test_a_threshold_by_test_name_moves_the_flag_not_the_test(reference):
    # A window with a score between Evidently's 0.1 and a raised threshold: flagged by default,
    # not with {"wasserstein": score + 0.01}; the method and the score stay Evidently's.
    current = generate_loans(1_500, seed=12)
    current["age"] = current["age"] + 0.11 * reference["age"].std()
    default = evaluate_drift(current, reference, LOAN_SCHEMA)
    score = default.features["age"].score
    assert 0.1 <= score < 0.2 and default.drifted_features == ["age"]
    raised = evaluate_drift(current, reference, LOAN_SCHEMA, thresholds={"wasserstein": score + 0.01})
    assert raised.verdict == NO_DRIFT
    assert raised.features["age"].score == score
    assert raised.features["age"].method == default.features["age"].method
    assert raised.features["age"].threshold == pytest.approx(score + 0.01)
    assert raised.features["region"].threshold == 0.1  # Jensen-Shannon: not named, Evidently's default


def test_live_quality_and_its_minimum():
    frame = pd.DataFrame(
        {
            "label": [1, 0, 1, 0] * 10,
            "prediction": [1, 0, 0, 0] * 10,
            "probability": [0.9, 0.1, 0.4, 0.2] * 10,
        }
    )
    quality = live_quality(frame, min_rows=30)
    assert quality["rows"] == 40
    assert quality["accuracy"] == pytest.approx(0.75)
    assert quality["f1"] == pytest.approx(2 / 3, abs=1e-4)
    assert live_quality(frame.head(10), min_rows=30) is None


def test_rows_of_the_latest_version():
    window = pd.DataFrame(
        {"model_version": ["1", "1", "2", "1"], "received_at": [1.0, 2.0, 4.0, 3.0], "x": range(4)}
    )
    version, rows = rows_of_latest_version(window)
    assert version == "2" and rows["x"].tolist() == [2]
    assert rows_of_latest_version(window.iloc[:0])[0] is None


# --- the store -------------------------------------------------------------------------------------


def record(i: int, version: str = "1", **features) -> dict:
    return {
        "request_id": f"req-{i}",
        "ts": 1_700_000_000.0 + i,
        "model_version": version,
        "features": {"age": 30 + i, "region": "north", **features},
        "prediction": i % 2,
        "probability": 0.25,
    }


def test_store_insert_is_idempotent_by_request_id(tmp_path):
    store = RecordStore(tmp_path / "m.db")
    assert store.insert_records([record(1), record(2), record(2)]) == (2, 1)
    assert store.insert_records([record(1), record(3)]) == (1, 1)
    assert store.counts() == {"records": 3, "labelled": 0}
    journal = store._conn().execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"
    store.close()


def test_store_labels_and_windows(tmp_path):
    store = RecordStore(tmp_path / "m.db")
    store.insert_records([record(i) for i in range(5)], received_at=100.0)
    store.insert_records([record(i) for i in range(5, 8)], received_at=200.0)
    assert store.set_labels([{"request_id": "req-1", "label": 1}, {"request_id": "nope", "label": 0}]) == (
        1,
        ["nope"],
    )
    window = store.window(max_rows=4, now=250.0)
    assert window["request_id"].tolist() == ["req-4", "req-5", "req-6", "req-7"]  # latest, oldest first
    assert window["age"].tolist() == [34, 35, 36, 37]
    assert store.window(max_rows=100, max_age_seconds=100, now=250.0)["request_id"].tolist() == [
        "req-5",
        "req-6",
        "req-7",
    ]
    labelled = store.labelled(max_rows=100)
    assert labelled["request_id"].tolist() == ["req-1"] and labelled["label"].tolist() == [1]
    assert store.window(max_rows=10, max_age_seconds=1, now=10_000.0).empty
    store.close()


def test_store_concurrent_writers_lose_nothing(tmp_path):
    store = RecordStore(tmp_path / "m.db")
    results = []

    def writer(offset):
        for batch in range(10):
            start = offset * 1_000 + batch * 20
            results.append(store.insert_records([record(i) for i in range(start, start + 20)]))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r[0] for r in results) == 800 and store.counts()["records"] == 800
    store.close()


# --- the evaluation wiring, in process -----------------------------------------------------------------


def test_monitor_evaluation_exports_gauges(tmp_path, reference, reference_std):
    settings = Settings(home=tmp_path)
    config = MonitorConfig(min_rows=500, window_rows=1_000)
    store = RecordStore(config.database(settings))
    metrics = MonitorMetrics()
    monitor = Monitor(settings, config, store, metrics, reference_loader=lambda uri, name, version: reference)

    def sample(name, labels=None):
        return metrics.registry.get_sample_value(name, labels)

    drifted = apply_scenario(
        generate_loans(1_000, seed=10), "covariate_shift", 1.0, reference_std=reference_std
    )
    rows = drifted[LOAN_SCHEMA.names].astype(object).where(drifted[LOAN_SCHEMA.names].notna(), None)
    store.insert_records(
        [
            {**record(i, version="3"), "features": features, "prediction": int(label)}
            for i, (features, label) in enumerate(
                zip(rows.to_dict("records"), drifted["default"], strict=True)
            )
        ]
    )
    store.set_labels(
        [{"request_id": f"req-{i}", "label": int(drifted["default"].iloc[i])} for i in range(100)]
    )
    summary = monitor.evaluate_once()
    assert summary["verdict"] == DRIFT and summary["model_version"] == "3"
    assert sample("sandbox_drift_share") == pytest.approx(2 / 11)
    assert sample("sandbox_feature_drifted", {"feature": "credit_score"}) == 1
    assert sample("sandbox_feature_drifted", {"feature": "age"}) == 0
    assert sample("sandbox_monitor_verdict_sufficient") == 1
    assert sample("sandbox_live_accuracy") == 1.0  # the predictions were the labels
    assert sample("sandbox_monitor_labelled_rows") == 100
    # The preset's HTML report of that window is rendered when asked for, once per evaluation.
    path = monitor.report()
    assert path == monitor.report_path and "<html" in path.read_text()[:2000].lower()
    rendered_at = path.stat().st_mtime_ns
    assert monitor.report() == path and path.stat().st_mtime_ns == rendered_at

    # A new version with few rows yet: no verdict and no stale per-feature flags.
    store.insert_records([record(5_000 + i, version="4") for i in range(10)])
    summary = monitor.evaluate_once()
    assert summary["verdict"] == INSUFFICIENT and summary["model_version"] == "4"
    assert math.isnan(sample("sandbox_drift_share"))
    assert sample("sandbox_feature_drifted", {"feature": "credit_score"}) is None
    assert sample("sandbox_monitor_verdict_sufficient") == 0
    store.close()
