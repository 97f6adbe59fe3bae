"""Shadow scoring: the ``challenger`` predicts on served rows, off the request path, and only the monitor hears it.

The monitor feed's sender thread calls ``ShadowScorer.score`` on every set of served batches it drains,
before it builds their records: one ``predict_columns`` of the challenger on the rows of all of them
(one model call amortises a call's fixed cost, ~5 ms through the pipeline, where one call per request
would double the request path's CPU). The answer goes into the records (``shadow_version``, ``shadow_prediction``,
``shadow_probability``), never to a client, and a shadow that raises or answers nonsense costs only
its own fields: the records go out without them, the failure is counted and logged once per version.

Which rows: ``share`` of them, picked by a hash of the request id (CRC-32, the same in every worker and
process), so the rule is reproducible and a row's fate does not depend on which worker served it.
Rows the champion's own version answered are never shadowed (a model compared with itself).

How much: at most ``max_busy`` of the worker's time (``ShadowBudget``, the sender thread's CPU seconds
against the wall clock). The shadow's cost grows with the rows served while the request path's does
too; on a saturated worker every CPU-second the shadow takes is one the requests wait for. Past the
budget the drained rows go without shadow fields (counted), so under load the shadow gives way and
the responses do not: the live gate then waits a little longer for its paired rows.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from pipelines.features import FeatureSchema
from services.serving.model_store import LoadedModel

log = logging.getLogger("sandbox.serving.shadow")


@dataclass(frozen=True, slots=True)
class Shadow:
    """A served batch's rows as the challenger scored them; ``None`` for a row it did not score."""

    version: str
    predictions: list[int | None]
    probabilities: list[float | None]


def in_shadow(request_id: str, share: float) -> bool:
    """Whether the row ``request_id`` is scored in shadow: a stable hash of the id below ``share``."""
    if share >= 1.0:
        return True
    return share > 0.0 and zlib.crc32(request_id.encode()) < share * 2**32


class ShadowBudget:
    """A token bucket of seconds: it fills at ``max_busy`` seconds a second, up to one second's worth;
    each scoring spends the CPU seconds it took. Empty, nothing is scored until it refills."""

    def __init__(self, max_busy: float, clock: Callable[[], float] = time.monotonic):
        self.max_busy, self.clock = max_busy, clock
        self.credit, self.at = max_busy, clock()

    def allows(self) -> bool:
        now = self.clock()
        self.credit = min(self.max_busy, self.credit + (now - self.at) * self.max_busy)
        self.at = now
        return self.credit > 0

    def spend(self, seconds: float) -> None:
        self.credit -= seconds


class ShadowScorer:
    def __init__(
        self,
        model: Callable[[], LoadedModel | None],
        schema: FeatureSchema,
        share: float = 1.0,
        count_rows: Callable[[str, int], None] = lambda version, n: None,
        count_failure: Callable[[], None] = lambda: None,
        budget: ShadowBudget | None = None,  # None: no bound (the service passes the setting's)
        count_skipped: Callable[[int], None] = lambda n: None,
        cpu_clock: Callable[[], float] = time.thread_time,
    ):
        self.model, self.schema, self.share = model, schema, share  # model(): the challenger now, or None
        self.count_rows, self.count_failure = count_rows, count_failure
        self.budget, self.count_skipped, self.cpu_clock = budget, count_skipped, cpu_clock
        self.logged_failures: set[str] = set()  # versions whose failure was logged (once each)

    def score(self, batches: list) -> list[Shadow | None]:
        """One ``Shadow`` (or None) per batch, aligned with ``batches``; never raises."""
        out: list[Shadow | None] = [None] * len(batches)
        model = self.model()
        if model is None or self.share <= 0:
            return out
        picked: list[tuple[int, list[int]]] = []  # (batch index, its rows to score)
        for i, batch in enumerate(batches):
            if not hasattr(batch, "request_ids") or batch.model_version == model.version:
                continue  # ready-made records, or the challenger's own answers
            rows = [j for j, rid in enumerate(batch.request_ids) if in_shadow(rid, self.share)]
            if rows:
                picked.append((i, rows))
        total = sum(len(rows) for _, rows in picked)
        if not total:
            return out
        if self.budget is None:
            return self._score(model, batches, picked, total, out)
        if not self.budget.allows():
            self.count_skipped(total)
            return out
        started = self.cpu_clock()
        try:
            return self._score(model, batches, picked, total, out)
        finally:
            self.budget.spend(self.cpu_clock() - started)

    def _score(
        self, model: LoadedModel, batches: list, picked: list, total: int, out: list
    ) -> list[Shadow | None]:
        columns: dict[str, list] = {name: [] for name in self.schema.names}
        for i, rows in picked:
            features, whole = batches[i].features, len(rows) == len(batches[i])
            for name, values in columns.items():
                values.extend(features[name] if whole else [features[name][j] for j in rows])
        try:
            probabilities = model.predict_columns(columns).tolist()  # the NumPy path if it passed at load
            if len(probabilities) != total or not all(0.0 <= p <= 1.0 for p in probabilities):
                bad = next((p for p in probabilities if not 0.0 <= p <= 1.0 or math.isnan(p)), None)
                raise ValueError(f"{len(probabilities)} probabilities for {total} rows (e.g. {bad})")
        except Exception as exc:  # a broken challenger costs its own fields, never the records
            self.count_failure()
            if model.version not in self.logged_failures:
                self.logged_failures.add(model.version)
                log.error("shadow %s v%s failed, records go without its answers: %s: %s",
                          model.name, model.version, type(exc).__name__, exc)  # fmt: skip
            return out
        start = 0
        for i, rows in picked:
            n = len(batches[i])
            predictions: list[int | None] = [None] * n
            scored: list[float | None] = [None] * n
            for j, p in zip(rows, probabilities[start : start + len(rows)], strict=True):
                predictions[j], scored[j] = int(p >= 0.5), p
            start += len(rows)
            out[i] = Shadow(model.version, predictions, scored)
        self.count_rows(model.version, total)
        return out
