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
