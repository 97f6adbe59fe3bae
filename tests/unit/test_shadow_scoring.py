"""Shadow scoring in the feed's sender: which rows, what the records carry, and a failing shadow."""

import logging
import random

import numpy as np
import pytest

from pipelines.data import generate_loans
from pipelines.features import LOAN_SCHEMA
from services.serving.feed import MonitorFeed, ServedBatch
from services.serving.model_store import LoadedModel, example_rows
from services.serving.rows import LoanRow, columns_of
from services.serving.shadow import ShadowBudget, ShadowScorer, in_shadow


class DebtModel:
    """A stand-in challenger whose answer is a known function of the rows (debt_to_income, clipped)."""

    def __init__(self, fail: Exception | None = None, nan: bool = False):
        self.fail, self.nan, self.calls = fail, nan, []

    def predict_proba(self, frame):
        self.calls.append(len(frame))
        if self.fail:
            raise self.fail
        p = np.clip(frame["debt_to_income"].to_numpy(dtype=float), 0, 1)
        if self.nan:
            p[0] = np.nan
        return np.column_stack([1 - p, p])


def challenger(model, version="2") -> LoadedModel:
    return LoadedModel("loan", version, "run", "challenger", model, [], schema=LOAN_SCHEMA)


def batch(n: int, seed: int, version: str = "1", prefix: str = "r") -> ServedBatch:
    rows = [LoanRow.model_validate(r) for r in example_rows(generate_loans(n, seed=seed)[LOAN_SCHEMA.names])]
    return ServedBatch(
        1.0,
        version,
        [f"{prefix}{seed}-{i}" for i in range(n)],
        columns_of(rows, LOAN_SCHEMA),
        [0] * n,
        [0.1] * n,
    )


def expected(b: ServedBatch) -> list[float]:
    return np.clip(np.array(b.features["debt_to_income"], dtype=float), 0, 1).tolist()


def test_one_call_scores_every_drained_batch_and_the_records_carry_it():
    model, counted = DebtModel(), []
    scorer = ShadowScorer(
        lambda: challenger(model), LOAN_SCHEMA, count_rows=lambda v, n: counted.append((v, n))
    )
    batches = [batch(3, seed=1), batch(5, seed=2)]
    shadows = scorer.score(batches)
    assert model.calls == [8] and counted == [("2", 8)]  # one model call for the whole drained set
    for b, shadow in zip(batches, shadows, strict=True):
        records = b.records(shadow)
        assert [r["shadow_probability"] for r in records] == pytest.approx(expected(b), abs=1e-12)
        assert [r["shadow_prediction"] for r in records] == [int(p >= 0.5) for p in expected(b)]
        assert {r["shadow_version"] for r in records} == {"2"}
        assert {r["model_version"] for r in records} == {"1"}  # the champion's answer is untouched
        assert [r["probability"] for r in records] == [0.1] * len(b)


def test_rows_the_challenger_itself_answered_and_ready_made_records_are_not_shadowed():
    model = DebtModel()
    scorer = ShadowScorer(lambda: challenger(model, version="1"), LOAN_SCHEMA)
    assert scorer.score([batch(3, seed=1, version="1"), [{"request_id": "x"}]]) == [None, None]
    assert model.calls == []


def test_no_challenger_means_no_shadow_fields():
    b = batch(2, seed=1)
    (shadow,) = ShadowScorer(lambda: None, LOAN_SCHEMA).score([b])
    assert shadow is None
    assert all("shadow_version" not in r for r in b.records(shadow))


def test_the_share_rule_is_a_stable_hash_of_the_request_id():
    rng = random.Random(13)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(20_000)]
    assert all(in_shadow(i, 1.0) for i in ids[:100]) and not any(in_shadow(i, 0.0) for i in ids[:100])
    picked = [i for i in ids if in_shadow(i, 0.25)]
    assert 0.23 < len(picked) / len(ids) < 0.27
    assert picked == [i for i in ids if in_shadow(i, 0.25)]  # the same ids every time (any worker)
    assert set(picked) <= {i for i in ids if in_shadow(i, 0.5)}  # a larger share keeps the smaller's rows


def test_a_share_scores_only_the_picked_rows_and_leaves_the_others_without_fields():
    model = DebtModel()
    scorer = ShadowScorer(lambda: challenger(model), LOAN_SCHEMA, share=0.5)
    b = batch(200, seed=4)
    (shadow,) = scorer.score([b])
    records = b.records(shadow)
    picked = [in_shadow(rid, 0.5) for rid in b.request_ids]
    assert 60 < sum(picked) < 140 and model.calls == [sum(picked)]
    for record, is_picked, p in zip(records, picked, expected(b), strict=True):
        assert ("shadow_version" in record) == is_picked
        if is_picked:
            assert record["shadow_probability"] == pytest.approx(p)


@pytest.mark.parametrize("model", [DebtModel(fail=ValueError("columns changed")), DebtModel(nan=True)])
def test_a_failing_shadow_leaves_the_records_intact_counted_and_logged_once(model, caplog):
    failures = []
    scorer = ShadowScorer(lambda: challenger(model), LOAN_SCHEMA, count_failure=lambda: failures.append(1))
    b = batch(4, seed=3)
    with caplog.at_level(logging.ERROR, logger="sandbox.serving.shadow"):
        first, second = scorer.score([b]), scorer.score([b])
    assert first == second == [None] and len(failures) == 2
    assert len([r for r in caplog.records if "shadow loan v2 failed" in r.getMessage()]) == 1
    assert b.records(first[0]) == b.records()


def test_the_feed_sends_its_records_even_when_the_scorer_itself_raises():
    def broken(batches):
        raise RuntimeError("bug in the scorer")

    feed = MonitorFeed("http://127.0.0.1:1", flush_seconds=0.0, shadow=broken)
    b = batch(3, seed=1)
    feed.submit(b)
    records, _ = feed._take()
    assert records == b.records()


def test_the_feed_builds_shadowed_records_from_the_scorer():
    model = DebtModel()
    scorer = ShadowScorer(lambda: challenger(model), LOAN_SCHEMA)
    feed = MonitorFeed("http://127.0.0.1:1", flush_seconds=0.0, shadow=scorer.score)
    first, second = batch(2, seed=1), batch(3, seed=2)
    feed.submit(first)
    feed.submit(second)
    records, _ = feed._take()
    assert model.calls == [5]
    assert [r["shadow_probability"] for r in records] == pytest.approx(expected(first) + expected(second))


class Clocks:
    """A wall clock and a CPU clock the test moves: each model call costs ``cost`` CPU seconds."""

    def __init__(self, cost: float):
        self.wall = self.cpu = 0.0
        self.cost = cost

    def charge(self):
        self.cpu += self.cost


class CostlyModel(DebtModel):
    def __init__(self, clocks: Clocks):
        super().__init__()
        self.clocks = clocks

    def predict_proba(self, frame):
        self.clocks.charge()
        return super().predict_proba(frame)


def budgeted(clocks: Clocks, max_busy: float, skipped: list) -> tuple[ShadowScorer, CostlyModel]:
    model = CostlyModel(clocks)
    scorer = ShadowScorer(
        lambda: challenger(model),
        LOAN_SCHEMA,
        budget=ShadowBudget(max_busy, clock=lambda: clocks.wall),
        count_skipped=skipped.append,
        cpu_clock=lambda: clocks.cpu,
    )
    return scorer, model


def test_a_shadow_past_its_share_of_the_time_gives_way_and_its_rows_go_unscored():
    clocks, skipped = Clocks(cost=0.02), []
    scorer, model = budgeted(clocks, max_busy=0.05, skipped=skipped)
    scored = 0
    for _ in range(200):  # a drain every 0.1 s, each scoring 0.02 s: 20 % of the time wanted
        clocks.wall += 0.1
        (shadow,) = scorer.score([batch(4, seed=7)])
        scored += shadow is not None
    # 20 s of wall clock at 5 %: about 1 s of scoring (50 calls), plus the first second's credit
    assert 45 <= scored <= 55 and len(model.calls) == scored, scored
    assert sum(skipped) == 4 * (200 - scored) and clocks.cpu <= 0.05 * 20 + 0.05 + 0.02


def test_a_cheap_shadow_within_its_budget_scores_every_drain():
    clocks, skipped = Clocks(cost=0.001), []
    scorer, _ = budgeted(clocks, max_busy=0.05, skipped=skipped)
    for _ in range(100):  # 1 % of the time wanted
        clocks.wall += 0.1
        assert scorer.score([batch(3, seed=8)])[0] is not None
    assert skipped == []
