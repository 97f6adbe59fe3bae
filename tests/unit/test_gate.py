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
