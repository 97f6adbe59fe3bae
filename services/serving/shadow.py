"""Shadow scoring: the ``challenger`` predicts on served rows, off the request path, and only the monitor hears it.

The monitor feed's sender thread calls ``ShadowScorer.score`` on every set of served batches it drains,
before it builds their records: one ``predict_proba`` of the challenger on the rows of all of them
(one model call amortises the ~5 ms of pandas a call costs, where one call per request would double
the request path's CPU). The answer goes into the records (``shadow_version``, ``shadow_prediction``,
``shadow_probability``), never to a client, and a shadow that raises or answers nonsense costs only
its own fields: the records go out without them, the failure is counted and logged once per version.

Which rows: ``share`` of them, picked by a hash of the request id (CRC-32, the same in every worker and
process), so the rule is reproducible and a row's fate does not depend on which worker served it.
Rows the champion's own version answered are never shadowed (a model compared with itself).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from pipelines.features import FeatureSchema
from services.serving.model_store import LoadedModel
from services.serving.rows import model_frame

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


class ShadowScorer:
    def __init__(
        self,
        model: Callable[[], LoadedModel | None],
        schema: FeatureSchema,
        share: float = 1.0,
        count_rows: Callable[[str, int], None] = lambda version, n: None,
        count_failure: Callable[[], None] = lambda: None,
    ):
        self.model, self.schema, self.share = model, schema, share  # model(): the challenger now, or None
        self.count_rows, self.count_failure = count_rows, count_failure
        self.logged_failures: set[str] = set()  # versions whose failure was logged (once each)

    def score(self, batches: list) -> list[Shadow | None]:
        """One ``Shadow`` (or None) per batch, aligned with ``batches``; never raises."""
        out: list[Shadow | None] = [None] * len(batches)
        model = self.model()
        if model is None or self.share <= 0:
            return out
        picked: list[tuple[int, list[int]]] = []  # (batch index, its rows to score)
        columns: dict[str, list] = {name: [] for name in self.schema.names}
        for i, batch in enumerate(batches):
            if not hasattr(batch, "request_ids") or batch.model_version == model.version:
                continue  # ready-made records, or the challenger's own answers
            rows = [j for j, rid in enumerate(batch.request_ids) if in_shadow(rid, self.share)]
            if not rows:
                continue
            picked.append((i, rows))
            whole = len(rows) == len(batch)
            for name, values in columns.items():
                values.extend(batch.features[name] if whole else [batch.features[name][j] for j in rows])
        total = sum(len(rows) for _, rows in picked)
        if not total:
            return out
        try:
            probabilities = model.predict_proba(model_frame(columns, self.schema)).tolist()
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
