"""The mix rule for retraining on production data (pipelines/production.py), with records in memory."""

import pytest

from pipelines.data import DataError, generate_loans
from pipelines.features import LABEL, LOAN_SCHEMA
from pipelines.production import production_data, records_frame
from pipelines.validate import check_frame


def records(n, shift=0, labelled=True):
    frame = generate_loans(n, seed=n)
    frame["credit_score"] = frame["credit_score"] - shift
    rows = frame[LOAN_SCHEMA.names].to_dict("records")
    return [
        {"request_id": str(i), "features": row, "label": int(y) if labelled else None}
        for i, (row, y) in enumerate(zip(rows, frame[LABEL], strict=True))
    ]


def fake_monitor(labelled, recent):
    calls = []

    def fetch(url, limit, want_labelled, since=None):
        calls.append((limit, want_labelled))
        return (labelled if want_labelled else recent)[-limit:]

    return fetch, calls


def test_training_is_production_plus_clean_rows_and_the_reference_is_recent_traffic():
    fetch, calls = fake_monitor(records(600), records(300, shift=100, labelled=False))
    training, reference = production_data(
        "http://m", n_rows=5000, clean_rows=2000, drift_reference_rows=250, fetch=fetch
    )
    assert len(training) == 2600  # 600 production + 2,000 clean
    assert check_frame(training, LOAN_SCHEMA).ok
    assert len(reference) == 250 and reference["credit_score"].mean() < training["credit_score"].mean() - 50
    assert calls == [(5000, True), (250, False)]


def test_clean_rows_zero_trains_on_production_alone():
    fetch, _ = fake_monitor(records(400), records(400))
    training, _ = production_data("http://m", clean_rows=0, fetch=fetch)
    assert len(training) == 400


def test_too_few_labelled_records_fail_with_what_to_do():
    fetch, _ = fake_monitor(records(50), records(50))
    with pytest.raises(DataError, match="only 50 labelled production records.*--label-delay"):
        production_data("http://m", min_rows=200, fetch=fetch)


def test_records_frame_keeps_missing_values_and_unlabelled_rows():
    rows = records(3, labelled=False)
    rows[0]["features"]["income"] = None
    frame = records_frame(rows)
    assert list(frame.columns) == LOAN_SCHEMA.names + [LABEL]
    assert frame["income"].isna().sum() == 1 and frame[LABEL].isna().all()


def test_with_since_the_reference_waits_for_rows_of_the_new_regime():
    arrived = []  # what the monitor holds after the alert: grows by 100 rows a poll
    shifted = records(400, shift=100, labelled=False)

    def fetch(url, limit, want_labelled, since=None):
        if want_labelled:
            return records(500)
        if since is None:
            raise AssertionError("asked for rows from before the alert")
        arrived.extend(shifted[len(arrived) : len(arrived) + 100])
        return arrived[-limit:]

    _, reference = production_data(
        "http://m", drift_reference_rows=300, since=1.0, wait_seconds=30, poll_seconds=0, fetch=fetch
    )
    assert len(reference) == 300 and len(arrived) == 300


def test_after_the_wait_the_reference_is_the_latest_rows_and_says_so(capsys):
    asked = []

    def fetch(url, limit, want_labelled, since=None):
        asked.append(since)
        return records(500) if want_labelled else records(50 if since else 300, labelled=False)

    _, reference = production_data(
        "http://m", drift_reference_rows=300, since=1.0, wait_seconds=0, fetch=fetch
    )
    assert len(reference) == 300 and asked[-1] is None
    assert "drift may persist" in capsys.readouterr().out
