"""Refused ``/predict`` requests, read back from the answer serving gave: why, which rows, which field.

One ASGI middleware (``RejectionWatch``, outermost) sees every refusal of ``/predict``: 413 from the
body limit and 415 from the JSON guard (services/common.py), 400 from BentoML's pydantic validation
(invalid JSON included). It keeps references to the request's body chunks as they pass (no copy),
and reads nothing of a 2xx answer; on a refusal it hands the status, the error body and the request
body to a sink (the service counts, the feed samples). So a valid request pays one status check.

What is counted (``sandbox_rows_rejected_total{field,reason}``, ``sandbox_requests_rejected_total{reason}``):

- a request that could not be split into rows (``REQUEST_REASONS``): once, by its reason;
- otherwise each row with an error, once, by its *first* error's field and reason (so the counter
  sums to rejected rows, the numerator of InputRejectionsHigh). Valid rows refused along with a bad
  one in the same request are not predicted and not counted: the request failed, the client sees it.

``field`` is a schema feature or ``none`` (an unknown key, a row that is not an object): the label's
values stay the schema's, whatever a client sends.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass

PREDICT_REFUSALS = (400, 413, 415, 422)
REQUEST_REASONS = ("too_many_rows", "body_too_large", "invalid_json", "other")
ROW_REASONS = ("out_of_range", "wrong_type", "missing", "unknown_category", "other")
NO_FIELD = "none"
MAX_SAMPLED_ROW_BYTES = 2048  # a sampled row bigger than this goes to the monitor as null

# pydantic error types -> our reasons (anything else: "other").
ROW_REASON_OF = {
    **dict.fromkeys(("less_than_equal", "greater_than_equal", "less_than", "greater_than", "finite_number"),
                    "out_of_range"),
    **dict.fromkeys(("int_parsing", "int_from_float", "int_type", "float_parsing", "float_type", "string_type",
                     "model_type", "model_attributes_type", "dict_type", "bool_parsing"), "wrong_type"),
    "missing": "missing",
}  # fmt: skip
# An empty or overlong category string: the client sent something that is no category at all.
# (Unseen but well-formed categories are served: the monitor flags them.)
ROW_REASON_OF.update(dict.fromkeys(("string_too_short", "string_too_long"), "unknown_category"))


@dataclass(frozen=True, slots=True)
class Rejection:
    """One refused request: a request-level ``reason``, or the rows that failed (index -> first error)."""

    ts: float
    reason: str | None  # one of REQUEST_REASONS when the request could not be split into rows
    rows: dict[int, dict]  # row index -> {"field": str | None, "reason": str, "message": str}
    body: bytes = b""  # the request body (only kept for row rejections: the sample reads the rows)

    def counted(self, features: Collection[str]) -> list[tuple[str, str]]:
        """``(field label, reason)`` per rejected row, the label bounded to ``features`` + ``none``."""
        return [(e["field"] if e["field"] in features else NO_FIELD, e["reason"]) for e in self.rows.values()]

    def sample(self, max_rows: int) -> list[dict]:
        """The monitor's ``rejected`` items: one per refused request, or per rejected row (at most ``max_rows``)."""
        if self.reason is not None:
            return [{"ts": self.ts, "reason": self.reason, "field": None, "row": None}]
        try:
            sent = json.loads(self.body).get("rows")
        except (ValueError, AttributeError):
            sent = None
        items = []
        for index, error in list(self.rows.items())[:max_rows]:
            row = sent[index] if isinstance(sent, list) and index < len(sent) else None
            if not isinstance(row, dict) or len(json.dumps(row)) > MAX_SAMPLED_ROW_BYTES:
                row = None
            items.append({"ts": self.ts, "reason": error["reason"], "field": error["field"], "row": row})
        return items


def parse_refusal(status: int, error_body: bytes, request_body: bytes, ts: float) -> Rejection | None:
    """What a refusal of ``/predict`` was about, from serving's own answer; None when it was not a refusal."""
    if status == 413:
        return Rejection(ts, "body_too_large", {})
    if status == 415:
        return Rejection(ts, "other", {})
    if status not in PREDICT_REFUSALS:
        return None
    try:
        details = json.loads(error_body).get("detail")
    except (ValueError, AttributeError):
        details = None
    if not isinstance(details, list) or not details:
        return Rejection(ts, "other", {})
    rows: dict[int, dict] = {}
    for detail in details:
        loc, kind = list(detail.get("loc") or []), str(detail.get("type", ""))
        if kind == "json_invalid":
            return Rejection(ts, "invalid_json", {})
        if len(loc) < 2 or loc[0] != "rows" or not isinstance(loc[1], int):  # about the request, not a row
            return Rejection(ts, "too_many_rows" if kind == "too_long" and loc == ["rows"] else "other", {})
        field = str(loc[2])[:64] if len(loc) > 2 else None
        rows.setdefault(loc[1], {"field": field, "reason": ROW_REASON_OF.get(kind, "other"),
                                 "message": str(detail.get("msg", ""))[:200]})  # fmt: skip
    return Rejection(ts, None, rows, request_body)


class RejectionWatch:
    """Outermost middleware on ``paths``: every refusal goes to ``STATE["on_refusal"]`` after it is answered."""

    def __init__(self, app, paths: tuple[str, ...], state: dict):
        self.app, self.paths, self.state = app, paths, state

    async def __call__(self, scope, receive, send):
        sink: Callable[[int, bytes, bytes], None] | None = self.state.get("on_refusal")
        if scope["type"] != "http" or scope["path"] not in self.paths or sink is None:
            return await self.app(scope, receive, send)
        chunks: list[bytes] = []
        answer: list[bytes] = []
        status = 0

        async def keep():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def watch(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status in PREDICT_REFUSALS:
                answer.append(message.get("body", b""))
            await send(message)

        await self.app(scope, keep, watch)
        if status in PREDICT_REFUSALS:
            sink(status, b"".join(answer), b"".join(chunks))
