import pytest

from pipelines.registry import decide_promotion

FLOOR, TOL = 0.70, 0.01


@pytest.mark.parametrize(
    ("challenger", "champion", "promote", "reason"),
    [
        (0.80, None, True, "no champion yet"),
        (0.65, None, False, "below the floor"),
        (0.85, 0.80, True, "vs champion 0.8000"),
        (0.795, 0.80, True, "vs champion 0.8000"),  # within tolerance
        (0.79, 0.80, True, "vs champion 0.8000"),  # exactly at the tolerance edge
        (0.78, 0.80, False, "worse than the champion's 0.8000"),
        (0.69, 0.60, False, "below the floor"),  # the floor wins even over a weak champion
        (float("nan"), None, False, "below the floor"),
    ],
)
def test_gate_decisions(challenger, champion, promote, reason):
    decision = decide_promotion(challenger, champion, FLOOR, TOL)
    assert decision.promote is promote
    assert reason in decision.reason
    assert decision.champion_score == champion


def test_tolerance_is_configurable():
    assert not decide_promotion(0.78, 0.80, FLOOR, 0.01).promote
    assert decide_promotion(0.78, 0.80, FLOOR, 0.05).promote


# --- the per-slice check and the outcome ---------------------------------------------------------

from pipelines.registry import PROMOTED, REJECTED, SHADOW, slice_scores  # noqa: E402

CHAMP_SLICES = {"region=north": 0.80, "region=south": 0.78}


@pytest.mark.parametrize(
    ("challenger_slices", "champion", "outcome", "reason"),
    [
        ({"region=north": 0.80, "region=south": 0.78}, 0.80, SHADOW, "challenger goes into shadow"),
        ({"region=north": 0.79, "region=south": 0.751}, 0.80, SHADOW, "every slice within 0.03"),
        (
            {"region=north": 0.81, "region=south": 0.749},
            0.80,
            REJECTED,
            "slice region=south 0.7490 vs 0.7800",
        ),
        ({"region=north": 0.70}, 0.80, REJECTED, "slice region=north"),  # overall fine, one slice not
        (
            {"region=east": 0.10},
            0.80,
            SHADOW,
            "challenger goes into shadow",
        ),  # no common slice: nothing to compare
        ({"region=south": 0.10}, None, PROMOTED, "no champion yet"),  # no champion: the floor decides
        ({"region=north": 0.90}, 0.85, REJECTED, "worse than the champion's"),  # overall first
    ],
)
def test_slice_check_and_outcome(challenger_slices, champion, outcome, reason):
    decision = decide_promotion(
        0.80, champion, FLOOR, TOL,
        challenger_slices=challenger_slices,
        champion_slices=CHAMP_SLICES if champion is not None else {},
        slice_tolerance=0.03,
    )  # fmt: skip
    assert decision.outcome == outcome
    assert reason in decision.reason
    assert decision.promote is (outcome != REJECTED)


def test_slice_scores_read_evaluates_keys():
    metrics = {"roc_auc": 0.8, "slice_region_north_roc_auc": 0.81, "slice_region_north_f1": 0.5,
               "slice_region_south_roc_auc": 0.79}  # fmt: skip
    assert slice_scores(metrics, "roc_auc", "region") == {"region=north": 0.81, "region=south": 0.79}
    assert slice_scores(metrics, "roc_auc", None) == {}


@pytest.mark.parametrize(
    ("high", "outcome"),
    [
        (0.02, SHADOW),  # 0.0320 behind on the slice, but its CI reaches above 0: noise, not evidence
        (-0.001, REJECTED),  # clearly worse, and past the tolerance
        (None, REJECTED),  # no CI for the slice (e.g. a metric without one): the point estimate decides
    ],
)
def test_a_slice_fails_the_offline_gate_only_when_clearly_worse(high, outcome):
    decision = decide_promotion(
        0.80, 0.80, FLOOR, TOL,
        challenger_slices={"region=north": 0.80, "region=south": 0.748}, champion_slices=CHAMP_SLICES,
        slice_tolerance=0.03, slice_highs={} if high is None else {"region=south": high, "region=north": 0.1},
    )  # fmt: skip
    assert decision.outcome == outcome
    if outcome == REJECTED:
        assert "region=south 0.7480 vs 0.7800" in decision.reason
        assert ("paired CI" in decision.reason) is (high is not None)


def test_slice_highs_are_the_paired_ci_on_each_slice_of_the_holdout():
    import numpy as np

    from pipelines.data import default_probability, generate_loans
    from pipelines.features import LOAN_SCHEMA
    from pipelines.registry import slice_highs

    class Scores:  # a fitted model's predict_proba from a function of the rows
        def __init__(self, probability):
            self.probability = probability

        def predict_proba(self, x):
            p = self.probability(x)
            return np.column_stack([1 - p, p])

    holdout = generate_loans(3_000, seed=3)
    champion = Scores(default_probability)
    north = holdout["region"].astype(str) == "north"
    inverted_north = Scores(lambda x: np.where(x["region"].astype(str) == "north", 1 - default_probability(x), default_probability(x)))  # fmt: skip
    highs = slice_highs(inverted_north, champion, holdout, LOAN_SCHEMA, "roc_auc")
    regions = set(holdout["region"].astype(str))
    assert set(highs) == {f"region={r}" for r in regions} and north.sum() >= 30
    assert highs["region=north"] < -0.2  # the inverted slice is clearly worse
    assert all(highs[f"region={r}"] == 0 for r in regions - {"north"})  # the same answers: difference 0
    assert slice_highs(inverted_north, champion, holdout, LOAN_SCHEMA, "accuracy") == {}  # no CI for it
    only = slice_highs(inverted_north, champion, holdout, LOAN_SCHEMA, "roc_auc", only={"region=north"})
    assert only == {"region=north": highs["region=north"]}  # the gate asks only for slices past the tolerance
