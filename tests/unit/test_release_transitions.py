"""The release controller's policy (a pure transition function) and the live gate's paired comparison."""

import json

import numpy as np
import pytest

from sandbox.settings import Settings
from services.retrainer.live_gate import compare, live_gate, roc_auc_rows, roc_auc_upper
from services.retrainer.release import (
    BAKE,
    IDLE,
    SHADOW,
    Observation,
    ReleaseState,
    bake_degradation,
    bake_quality,
    paired_evidence,
    transition,
)

S = Settings(release_min_paired_rows=100, release_shadow_deadline_seconds=600, release_bake_seconds=120)
T0 = 1_000.0
PROMOTE = {"promote": True, "reason": "tie within tolerance -> promote", "rows": 150,
           "metrics": [{"metric": "roc_auc", "champion": 0.80}, {"metric": "f1", "champion": 0.6}],
           "slices": {"region=north": [{"metric": "roc_auc", "champion": 0.78}]}}  # fmt: skip
REJECT = {**PROMOTE, "promote": False, "reason": "worse on live rows: roc_auc ..."}
FINE = {"error_rate": 0.0, "p99_seconds": 0.05}


def shadow_state() -> ReleaseState:
    state, _ = transition(ReleaseState(champion="1"), Observation("1", "2"), S, T0)
    return state


def bake_state() -> ReleaseState:
    state, _ = transition(shadow_state(), Observation("1", "2", 150, PROMOTE, FINE), S, T0 + 30)
    return state


def restarted(state: ReleaseState) -> ReleaseState:
    """What a restart reads back: the persisted JSON."""
    return ReleaseState.from_dict(json.loads(json.dumps(state.to_dict())))


def kinds(actions) -> list[tuple]:
    return [(a["do"], a.get("alias") or a.get("step"), a.get("version")) for a in actions]


QUALITY_OK = {
    "rows": 200,
    "overall": {"roc_auc": 0.79, "roc_auc_high": 0.83},
    "slices": {"region=north": {"rows": 120, "roc_auc": 0.77, "roc_auc_high": 0.85}},
}

# (name, state, observation, now, expected phase, expected actions, text in the last outcome / waits_for)
CASES = [
    ("idle, no challenger", lambda: ReleaseState(champion="1"), Observation("1", None), T0, IDLE, [], "a challenger"),
    ("idle, challenger is the champion", lambda: ReleaseState(champion="1"), Observation("1", "1"), T0, IDLE, [], ""),
    ("idle -> shadow", lambda: ReleaseState(champion="1"), Observation("1", "2"), T0, SHADOW,
     [("event", "shadow", "2")], "100 labelled live rows"),
    ("idle, challenger already decided", lambda: restarted(transition(shadow_state(), Observation("1", "2", 150, REJECT),
     S, T0 + 30)[0]), Observation("1", "2"), T0 + 40, IDLE, [], ""),
    ("shadow, too few rows: waits", shadow_state, Observation("1", "2", 40), T0 + 30, SHADOW, [], "100 labelled"),
    ("shadow -> bake (promote)", shadow_state, Observation("1", "2", 150, PROMOTE, FINE), T0 + 30, BAKE,
     [("tag", None, "2"), ("event", "live gate", "2"), ("set_alias", "previous", "1"), ("set_alias", "champion", "2"),
      ("delete_alias", "challenger", None), ("event", "bake", "2")], "promoted"),
    ("shadow -> idle (live gate rejects)", shadow_state, Observation("1", "2", 150, REJECT), T0 + 30, IDLE,
     [("tag", None, "2"), ("event", "live gate", "2"), ("delete_alias", "challenger", None)], "worse on live rows"),
    ("shadow -> idle (no labels by the deadline)", shadow_state, Observation("1", "2", 7), T0 + 600, IDLE,
     [("tag", None, "2"), ("event", "live gate", "2"), ("delete_alias", "challenger", None)],
     "rejected: no live evidence: 7 of 100"),
    ("shadow, superseded by a newer challenger", shadow_state, Observation("1", "3"), T0 + 30, SHADOW,
     [("event", "shadow", "2"), ("event", "shadow", "3")], "superseded by v3"),
    ("shadow, challenger withdrawn by hand", shadow_state, Observation("1", None), T0 + 30, IDLE,
     [("event", "shadow", "2")], "moved by hand"),
    ("bake, no degradation: waits", bake_state, Observation("2", None, serving=FINE, quality=QUALITY_OK), T0 + 60,
     BAKE, [], "the bake to end"),
    ("bake -> idle (done)", bake_state, Observation("2", None, serving=FINE, quality=QUALITY_OK), T0 + 150, IDLE,
     [("event", "done", "2")], "baked 120s"),
    ("bake -> rollback (error rate)", bake_state, Observation("2", None, serving={"error_rate": 0.2, "p99_seconds": 0.05}),
     T0 + 60, IDLE, [("set_alias", "champion", "1"), ("tag", None, "2"), ("event", "rolled back", "2")],
     "serving error rate 20.00%"),
    ("bake -> rollback (p99)", bake_state, Observation("2", None, serving={"error_rate": 0.0, "p99_seconds": 0.9}),
     T0 + 60, IDLE, [("set_alias", "champion", "1"), ("tag", None, "2"), ("event", "rolled back", "2")], "p99 latency"),
    ("bake -> rollback (live quality)", bake_state,
     Observation("2", None, serving=FINE, quality={"rows": 150, "overall": {"roc_auc": 0.70, "roc_auc_high": 0.74}, "slices": {}}),
     T0 + 60, IDLE, [("set_alias", "champion", "1"), ("tag", None, "2"), ("event", "rolled back", "2")], "live roc_auc 0.7000"),
    ("bake -> rollback (a slice regresses)", bake_state,
     Observation("2", None, serving=FINE, quality={"rows": 150, "overall": {"roc_auc": 0.80},
                                                    "slices": {"region=north": {"rows": 120, "roc_auc": 0.60, "roc_auc_high": 0.66}}}),
     T0 + 60, IDLE, [("set_alias", "champion", "1"), ("tag", None, "2"), ("event", "rolled back", "2")],
     "slice region=north: live roc_auc 0.6000 (at most 0.6600 at 95%) vs 0.7800"),
    ("bake, a slice below the floor whose CI reaches above it: noise, kept", bake_state,
     Observation("2", None, serving=FINE, quality={"rows": 150, "overall": {"roc_auc": 0.80},
                                                    "slices": {"region=north": {"rows": 120, "roc_auc": 0.66, "roc_auc_high": 0.74}}}),
     T0 + 60, BAKE, [], "the bake to end"),
    ("bake, a new slice (no baseline) judged against the overall", bake_state,
     Observation("2", None, serving=FINE, quality={"rows": 150, "overall": {"roc_auc": 0.80},
                                                    "slices": {"region=mars": {"rows": 120, "roc_auc": 0.65, "roc_auc_high": 0.69}}}),
     T0 + 60, IDLE, [("set_alias", "champion", "1"), ("tag", None, "2"), ("event", "rolled back", "2")],
     "region=mars: live roc_auc 0.6500 (at most 0.6900 at 95%) vs 0.8000"),
    ("bake, a small slice is not judged", bake_state,
     Observation("2", None, serving=FINE, quality={"rows": 150, "overall": {"roc_auc": 0.80},
                                                    "slices": {"region=north": {"rows": 20, "roc_auc": 0.30, "roc_auc_high": 0.40}}}),
     T0 + 60, BAKE, [], "the bake to end"),
    ("bake, Prometheus unknown is no degradation", bake_state,
     Observation("2", None, serving={"error_rate": None, "p99_seconds": None}), T0 + 60, BAKE, [], "the bake"),
    ("bake, champion moved by hand", bake_state, Observation("5", None), T0 + 60, IDLE, [("event", "bake", "2")],
     "moved by hand to v5"),
]  # fmt: skip


@pytest.mark.parametrize("restart", [False, True], ids=["running", "after a restart"])
@pytest.mark.parametrize(
    ("name", "make", "obs", "now", "phase", "actions", "text"), CASES, ids=[c[0] for c in CASES]
)
def test_transition_table(name, make, obs, now, phase, actions, text, restart):
    state = restarted(make()) if restart else make()
    new, done = transition(state, obs, S, now)
    assert new.phase == phase
    assert kinds(done) == actions
    said = (new.outcomes[-1]["reason"] if new.outcomes and done else "") + " " + new.waits_for
    assert text in said or text in json.dumps([a.get("tags") for a in done]), said
    # The next state survives a restart unchanged (what the thread saves is what it resumes).
    assert restarted(new) == new


def test_promotion_tags_the_live_decision_and_keeps_the_baseline():
    new, actions = transition(shadow_state(), Observation("1", "2", 150, PROMOTE, FINE), S, T0 + 30)
    (tag,) = [a for a in actions if a["do"] == "tag"]
    assert tag["tags"]["gate.live.decision"] == "promoted"
    assert json.loads(tag["tags"]["gate.live.details"])["rows"] == 150
    assert new.previous == "1" and new.champion == "2" and new.deadline == T0 + 30 + 120
    assert new.baseline["quality"]["overall"]["roc_auc"] == 0.80 and new.baseline["serving"] == FINE


def test_rollback_moves_champion_back_and_counts_an_outcome():
    new, actions = transition(bake_state(), Observation("2", None, serving={"error_rate": 0.5}), S, T0 + 60)
    assert new.champion == "1" and new.outcomes[-1]["outcome"] == "rolled_back"
    assert next(a for a in actions if a["do"] == "tag")["tags"]["rolled_back"].startswith(
        "serving error rate"
    )
    # The rolled-back version is decided: it never goes into shadow again by itself.
    again, none = transition(new, Observation("1", "2"), S, T0 + 70)
    assert again.phase == IDLE and none == []


def test_a_slow_p99_below_the_floor_is_noise():
    assert bake_degradation({"serving": {"p99_seconds": 0.01}}, {"p99_seconds": 0.05}, None, S) is None


# --- the paired comparison -----------------------------------------------------------------------


SLICES = {"roc_auc": 0.05, "f1": 0.05}


def case(n: int, seed: int, noise: float):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    good = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.25, n), 0, 1)
    other = np.clip(0.5 + (y - 0.5) * 0.6 * (1 - noise) + rng.normal(0, 0.25 + noise, n), 0, 1)
    return y, good, other


def test_identical_predictions_are_a_tie_and_promote():
    y, p, _ = case(500, 0, 0.0)
    result = live_gate(y, p, p.copy(), None, {"roc_auc": 0.02, "f1": 0.02}, SLICES, 500, 0.95, seed=1)
    assert result.promote and result.reason.startswith("tie within tolerance -> promote")
    for m in result.metrics:
        assert m.difference == 0 and m.low <= 0 <= m.high


@pytest.mark.slow  # a live gate of 1,000 resamples per seed, over many seeds, in make test
def test_a_clearly_worse_challenger_is_rejected_over_many_seeds():
    rejected = 0
    for seed in range(20):
        y, good, worse = case(1_000, seed, 0.5)
        result = live_gate(y, good, worse, None, {"roc_auc": 0.02, "f1": 0.02}, SLICES, 300, 0.95, seed=seed)
        rejected += not result.promote
        assert result.metrics[0].high < 0  # its CI lies below 0
    assert rejected == 20


@pytest.mark.slow  # a live gate of 1,000 resamples per seed, over many seeds, in make test
def test_an_equal_but_different_challenger_is_mostly_promoted():
    # Two models of one signal, each with its own small errors (as two retrained versions are): a tie,
    # which the non-inferiority test promotes at the default 2,000 paired rows (at 1,000, f1's CI
    # rejected 12-25 % of such ties: why release_min_paired_rows is 2,000).
    promoted = 0
    rows = Settings().release_min_paired_rows
    for seed in range(20):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 2, rows)
        signal = 0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.25, rows)
        champion, challenger = (np.clip(signal + rng.normal(0, 0.05, rows), 0, 1) for _ in range(2))
        gate = live_gate(
            y, champion, challenger, None, {"roc_auc": 0.02, "f1": 0.02}, SLICES, 300, 0.95, seed=seed
        )
        promoted += gate.promote
    assert promoted >= 19


def test_the_ci_is_seeded_and_matches_sklearn_on_all_rows():
    from sklearn.metrics import f1_score, roc_auc_score

    y, a, b = case(400, 3, 0.2)
    one = compare("roc_auc", y, a, b, 200, 0.9, np.random.default_rng(7))
    assert one == compare("roc_auc", y, a, b, 200, 0.9, np.random.default_rng(7))
    assert one.champion == pytest.approx(roc_auc_score(y, a), abs=1e-5)
    assert one.challenger == pytest.approx(roc_auc_score(y, b), abs=1e-5)
    f1 = compare("f1", y, a, b, 50, 0.9, np.random.default_rng(7))
    assert f1.champion == pytest.approx(f1_score(y, a >= 0.5), abs=1e-5)


def test_a_regressing_slice_rejects_even_when_overall_is_fine():
    y, good, _ = case(2_000, 5, 0.0)
    regions = np.array(["north", "south"])[np.arange(2_000) % 2]
    challenger = good.copy()
    south = regions == "south"
    challenger[south] = np.random.default_rng(0).random(south.sum())  # no skill on the south
    result = live_gate(y, good, challenger, regions, {"roc_auc": 0.5}, {"roc_auc": 0.05}, 300, 0.95)
    assert not result.promote and "slice region=south regresses" in result.reason


def test_evidence_from_records_pairs_only_rows_both_versions_answered():
    y, a, b = case(150, 1, 0.0)
    records = [
        {"model_version": "1", "shadow_version": "2", "label": int(t), "probability": float(p), "prediction": int(p >= 0.5),
         "shadow_probability": float(q), "shadow_prediction": int(q >= 0.5), "features": {"region": "north"}}
        for t, p, q in zip(y, a, b, strict=True)
    ]  # fmt: skip
    records.append({**records[0], "shadow_version": None, "shadow_probability": None})  # not shadowed
    records.append({**records[0], "model_version": "9"})  # another champion's answer
    rows, gate = paired_evidence(records, "1", "2", S, "region")
    assert rows == 150 and gate is not None and gate["rows"] == 150 and "region=north" in gate["slices"]
    assert paired_evidence(records[:50], "1", "2", S, "region") == (50, None)
    quality = bake_quality(records, "1", "region", 0.95)
    assert quality["rows"] == 151 and quality["slices"]["region=north"]["rows"] == 151  # not v9's


def slice_rows(n: int, rng: np.random.Generator, separation: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` labelled rows of one region, a quarter positive; ``separation`` sets the roc_auc."""
    y = (rng.random(n) < 0.25).astype(int)
    return y, 1 / (1 + np.exp(-(separation * (y - 0.5) + rng.normal(0, 1, n))))


def auc_of(y: np.ndarray, prob: np.ndarray) -> float:
    return float(roc_auc_rows(y[None, :], prob[None, :])[0])


def bake_verdict(y: np.ndarray, prob: np.ndarray, before: float) -> str | None:
    records = [{"model_version": "2", "label": int(t), "probability": float(p), "features": {"region": "north"}}
               for t, p in zip(y, prob, strict=True)]  # fmt: skip
    quality = bake_quality(records, "2", "region", S.release_confidence)
    quality["rows"] = 0  # the overall rule needs release_min_paired_rows: judge the slice alone here
    baseline = {"quality": {"overall": {"roc_auc": before}, "slices": {"region=north": {"roc_auc": before}}}}
    return bake_degradation(baseline, None, quality, S)


def test_the_bound_has_the_bootstrap_spread():
    """DeLong's standard error agrees with the spread of a 2,000-resample bootstrap of the same rows."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    for n in (120, 400, 2_000):
        y, prob = slice_rows(n, rng, 1.5)
        auc, high = roc_auc_upper(y, prob, 0.95)
        index = rng.integers(0, n, size=(2_000, n))
        boot = roc_auc_rows(y[index], prob[index])
        assert auc == pytest.approx(roc_auc_score(y, prob), abs=1e-9)
        assert (high - auc) / 1.95996 == pytest.approx(np.nanstd(boot), rel=0.1)


@pytest.mark.slow  # many resampled bakes, in make test
def test_a_good_version_on_a_small_slice_is_not_rolled_back_by_noise():
    """The CI failure: a good version's region of ~120 rows read 0.7656 against 0.8754. Over 1,000
    seeded draws of 120 rows from the champion's own distribution, the rule rolls back at most once,
    where a point estimate against the same floor rolls back ~1 % of reads: and a bake reads five
    regions on every poll, so a point rule rolls a good version back in a good share of bakes."""
    rng = np.random.default_rng(11)
    y, prob = slice_rows(200_000, rng, 1.5)
    before = auc_of(y, prob)  # the champion's figure, ~0.86
    rolled = points = 0
    for _ in range(1_000):
        y, prob = slice_rows(120, rng, 1.5)
        rolled += bake_verdict(y, prob, before) is not None
        points += auc_of(y, prob) < before - S.release_max_slice_quality_drop
    assert rolled <= 1 and points >= 5, (rolled, points)


@pytest.mark.parametrize(
    ("separation", "at_least"), [(-1.5, 1.0), (0.2, 0.9)], ids=["inverted labels", "little skill"]
)
def test_a_bad_version_on_a_small_slice_is_rolled_back(separation, at_least):
    rng = np.random.default_rng(12)
    y, prob = slice_rows(200_000, rng, 1.5)
    before = auc_of(y, prob)
    verdicts = [bake_verdict(*slice_rows(120, rng, separation), before) for _ in range(300)]
    assert sum(v is not None for v in verdicts) >= at_least * len(verdicts)
    assert all(v is None or v.startswith("slice region=north: live roc_auc") for v in verdicts)


@pytest.mark.slow  # four real models and 60 gates: ~25 s, so `make test` runs it and test-fast does not
def test_real_retrains_as_good_as_the_champion_are_promoted_at_the_default_tolerances():
    """v1 and independent retrains of it (other seeds; and the late regression's launch model, which
    is v1's equal on today's regions) on 2,000 clean live rows, 10 draws each: f1's CI is wide there."""
    from pipelines.data import generate_loans
    from pipelines.features import LABEL, LOAN_SCHEMA
    from pipelines.scenarios import apply_scenario
    from pipelines.train import features_only, split, train_model
    from sandbox.demo import LATE_REGRESSION, LATE_REGRESSION_SEED

    def trained(frame, seed):
        return train_model(split(frame, LOAN_SCHEMA, seed=seed)[0], LOAN_SCHEMA)

    champion = trained(generate_loans(20_000, 0), 0)
    challengers = [trained(generate_loans(20_000, seed), seed) for seed in (1, 2)]
    late = LATE_REGRESSION_SEED  # the demo's launch model
    challengers.append(
        trained(apply_scenario(generate_loans(20_000, late), LATE_REGRESSION, 1.0, late), late)
    )
    s = Settings()
    promoted = {"default": 0, "f1 at 0.02": 0}
    for draw in range(10):
        live = generate_loans(s.release_min_paired_rows, 1_000 + draw)
        x, y, regions = features_only(live, LOAN_SCHEMA), live[LABEL].to_numpy(), live["region"].to_numpy()
        before = champion.predict_proba(x)[:, 1]
        for model in challengers:
            after = model.predict_proba(x)[:, 1]
            for name, tolerances in (
                ("default", s.release_tolerances),
                ("f1 at 0.02", {"roc_auc": 0.02, "f1": 0.02}),
            ):
                gate = live_gate(
                    y, before, after, regions, tolerances, s.release_slice_tolerances, 300, 0.95, seed=draw
                )
                promoted[name] += gate.promote
    assert promoted["default"] >= 29, promoted  # of 30
    assert promoted["f1 at 0.02"] <= 24, promoted  # why f1 has its own, wider tolerance


def test_the_live_gate_settings_refuse_an_unknown_metric_or_a_metric_without_a_slice_tolerance():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="knows roc_auc and f1, not log_loss"):
        Settings(release_tolerances={"roc_auc": 0.02, "log_loss": 0.1})
    with pytest.raises(ValidationError, match="SLICE_TOLERANCES has no tolerance for f1"):
        Settings(release_slice_tolerances={"roc_auc": 0.05})
    assert set(Settings().release_tolerances) == set(Settings().release_slice_tolerances) == {"roc_auc", "f1"}
