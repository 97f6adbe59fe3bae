"""Refused /predict requests read back from serving's answers (the shapes BentoML and the guards send)."""

import json

import pytest

from pipelines.features import LOAN_SCHEMA
from services.serving.feed import MonitorFeed
from services.serving.rejections import NO_FIELD, parse_refusal
from services.serving.rows import EXAMPLE_ROW


def answer(*details) -> bytes:
    return json.dumps({"error": "n validation error", "detail": list(details)}).encode()


def error(loc, kind, msg="bad"):
    return {"loc": loc, "type": kind, "msg": msg}


def body(*rows) -> bytes:
    return json.dumps({"rows": list(rows)}).encode()


@pytest.mark.parametrize(
    ("status", "details", "reason"),
    [
        (413, None, "body_too_large"),
        (415, None, "other"),
        (400, [error([], "json_invalid", "Invalid JSON")], "invalid_json"),
        (400, [error(["rows"], "too_long")], "too_many_rows"),
        (400, [error(["rows"], "too_short")], "other"),  # an empty list
        (400, [error(["rows"], "missing")], "other"),  # no rows at all
        (400, [error(["rows"], "list_type")], "other"),
        (400, None, "other"),  # a 400 that is not pydantic's
    ],
)
def test_a_request_that_cannot_be_split_into_rows_has_one_request_reason(status, details, reason):
    rejection = parse_refusal(status, answer(*details) if details else b"{}", b"", ts=1.0)
    assert rejection.reason == reason and rejection.rows == {} and rejection.counted(LOAN_SCHEMA.names) == []
    assert rejection.sample(10) == [{"ts": 1.0, "reason": reason, "field": None, "row": None}]


def test_each_bad_row_counts_once_by_its_first_error_and_field_labels_stay_the_schemas():
    rows = [
        {**EXAMPLE_ROW, "credit_score": 900, "age": "old"},  # two errors: counted once, by the first
        EXAMPLE_ROW,  # valid, refused with the request: not a rejected row
        {**EXAMPLE_ROW, "age": "old"},
        {k: v for k, v in EXAMPLE_ROW.items() if k != "income"},
        {**EXAMPLE_ROW, "salary_in_k": 1},  # an unknown key: label "none", the sample keeps the name
        None,
        {**EXAMPLE_ROW, "region": ""},
    ]
    refusal = answer(
        error(["rows", 0, "credit_score"], "less_than_equal"), error(["rows", 0, "age"], "int_parsing"),
        error(["rows", 2, "age"], "int_parsing"), error(["rows", 3, "income"], "missing"),
        error(["rows", 4, "salary_in_k"], "extra_forbidden"), error(["rows", 5], "model_type"),
        error(["rows", 6, "region"], "string_too_short"),
    )  # fmt: skip
    rejection = parse_refusal(400, refusal, body(*rows), ts=2.0)
    assert rejection.reason is None
    assert rejection.counted(LOAN_SCHEMA.names) == [
        ("credit_score", "out_of_range"), ("age", "wrong_type"), ("income", "missing"),
        (NO_FIELD, "other"), (NO_FIELD, "wrong_type"), ("region", "unknown_category"),
    ]  # fmt: skip
    sample = rejection.sample(10)
    assert [(s["field"], s["reason"]) for s in sample][3:5] == [
        ("salary_in_k", "other"),
        (None, "wrong_type"),
    ]
    assert sample[0]["row"] == rows[0] and sample[4]["row"] is None and all(s["ts"] == 2.0 for s in sample)
    assert len(rejection.sample(2)) == 2


def test_a_huge_or_unreadable_row_is_sampled_without_its_values():
    huge = {**EXAMPLE_ROW, "region": "x" * 5000}
    rejection = parse_refusal(400, answer(error(["rows", 0, "region"], "string_too_long")), body(huge), ts=0)
    assert rejection.sample(5) == [{"ts": 0, "reason": "unknown_category", "field": "region", "row": None}]
    unreadable = parse_refusal(400, answer(error(["rows", 0, "age"], "int_parsing")), b"\xff", ts=0)
    assert unreadable.sample(5)[0]["row"] is None


@pytest.mark.parametrize("status", [200, 404, 405, 503])
def test_other_answers_are_not_refusals(status):
    assert parse_refusal(status, b"{}", b"", ts=0) is None


def test_the_feed_bounds_refused_requests_and_counts_the_drops():
    counts: dict[str, int] = {}
    feed = MonitorFeed("http://127.0.0.1:9", rejected_queue_size=3, rejected_queue_bytes=10_000,
                       count_rejected=lambda outcome, n: counts.__setitem__(outcome, counts.get(outcome, 0) + n))  # fmt: skip
    small = parse_refusal(413, b"", b"", ts=0)
    big = parse_refusal(400, answer(error(["rows", 0, "age"], "int_parsing")), b" " * 20_000, ts=0)
    feed.submit_rejected(big)  # over the byte bound
    for _ in range(4):  # the fourth is over the count bound
        feed.submit_rejected(small)
    assert counts == {"dropped_queue_full": 2} and len(feed.rejected) == 3
    records, rejections = feed._take()
    assert records == [] and len(rejections) == 3 and not feed.rejected and feed.rejected_bytes == 0
