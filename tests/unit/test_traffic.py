import json

import pytest

from pipelines.data import DataError
from pipelines.features import LOAN_SCHEMA
from sandbox.traffic import check_loopback, check_traffic, rows_with_truth
from services.serving.rows import LoanRow


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rps": 0}, "--rps must be"),
        ({"rps": 10_000}, "--rps must be"),
        ({"duration": 0}, "--duration must be"),
        ({"duration": 86_400}, "--duration must be"),
        ({"rows_per_request": 0}, "--rows-per-request"),
        ({"scenario": "flood"}, "unknown scenario"),
    ],
)
def test_traffic_is_bounded(kwargs, message):
    args = {"rps": 10, "duration": 10, "scenario": "none", "severity": 1.0, "rows_per_request": 1, **kwargs}
    with pytest.raises(DataError, match=message):
        check_traffic(**args)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_are_allowed(host):
    check_loopback(host)


@pytest.mark.parametrize("host", ["10.0.0.5", "192.168.1.1", "example.com", "8.8.8.8"])
def test_other_hosts_are_refused(host):
    with pytest.raises(DataError, match="loopback"):
        check_loopback(host)


@pytest.mark.parametrize(
    "scenario", ["none", "covariate_shift", "new_category", "missing_values", "concept_drift", "unit_change"]
)
def test_generated_rows_are_valid_requests_with_truth(scenario):
    rows, truth = rows_with_truth(
        200, scenario, 1.0, seed=3, reference_std={"credit_score": 70.0, "debt_to_income": 0.17}
    )
    assert len(rows) == len(truth) == 200 and set(truth) == {0, 1}
    for row in rows:
        LoanRow(**row)  # what serving will accept
    assert set(rows[0]) == set(LOAN_SCHEMA.names)
    if scenario == "new_category":
        assert any(r["region"] == "overseas" for r in rows)
    if scenario == "missing_values":
        assert any(r["income"] is None for r in rows)
    if scenario == "unit_change":  # income in thousands, still accepted by serving
        assert max(r["income"] for r in rows) < 2_000


def test_invalid_rows_breaks_the_stated_share_the_ways_serving_refuses():
    from pydantic import ValidationError

    from sandbox.traffic import INVALID_VALUES, check_traffic
    from services.serving.rejections import parse_refusal

    rows, truth = rows_with_truth(400, "invalid_rows", 1.0, seed=3, reference_std={})
    assert len(rows) == len(truth) == 400
    refused: dict[str, int] = {}
    for row in rows:
        try:
            LoanRow(**row)
        except ValidationError as exc:
            # Serving's 400 carries these errors; read them back as serving counts them.
            detail = [
                {**e, "loc": ["rows", 0, *e["loc"]]}
                for e in exc.errors(include_context=False, include_input=False)
            ]
            rejection = parse_refusal(400, json.dumps({"detail": detail}).encode(), b"", ts=0)
            ((field, reason),) = rejection.counted(LOAN_SCHEMA.names)
            refused[f"{field}:{reason}"] = refused.get(f"{field}:{reason}", 0) + 1
    assert sum(refused.values()) / len(rows) == pytest.approx(0.3, abs=0.06)
    assert set(refused) == {f"{field}:{reason}" for field, _, reason in INVALID_VALUES}
    check_traffic(10, 10, "invalid_rows", 1.0, 1)  # a traffic scenario...
    with pytest.raises(DataError, match="invalid_rows"):
        check_traffic(10, 10, "flood", 1.0, 1)  # ...named in the choices


def test_invalid_rows_is_not_a_training_scenario():
    from pipelines.scenarios import check_scenario

    with pytest.raises(DataError, match="unknown scenario 'invalid_rows'"):
        check_scenario("invalid_rows", 1.0)


def test_pacer_reads_the_clock_once_so_a_late_request_never_sleeps_negative(monkeypatch):
    import sandbox.traffic as traffic

    slept = []

    def sleep(seconds: float) -> None:  # time.sleep's own rule
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        slept.append(seconds)

    monkeypatch.setattr(traffic.time, "sleep", sleep)
    readings = iter([0.0, 0.09, 0.2, 5.0])  # under load the clock jumps between requests
    pacer = traffic.Pacer(rps=10, clock=lambda: next(readings))
    pacer.wait(1)  # due at 0.1, clock 0.09: sleep 0.01
    pacer.wait(2)  # due at 0.2, clock 0.2: no sleep
    pacer.wait(3)  # due at 0.3, clock 5.0 (late): at once
    assert slept == [pytest.approx(0.01)]


def test_label_scheduler_sends_due_labels_and_counts_failures():
    import httpx

    from sandbox.traffic import LabelScheduler, TrafficSummary

    posted = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = __import__("json").loads(request.content)
        posted.append(body["labels"])
        return httpx.Response(503 if len(posted) == 2 else 200)

    summary = TrafficSummary(scenario="none", severity=1.0)
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        labels = LabelScheduler(client, "http://monitor", delay=0.0, summary=summary)
        labels.add([{"request_id": "a"}, {"request_id": "b"}], [1, 0])
        labels.send_due()
        labels.add([{"request_id": "c"}], [1])
        labels.drain()
    assert posted[0] == [{"request_id": "a", "label": 1}, {"request_id": "b", "label": 0}]
    assert summary.labels_sent == 2 and summary.labels_failed == 1


def test_incident_help_lists_every_incident_and_refuses_others():
    from typer.testing import CliRunner

    from sandbox.cli import app
    from sandbox.traffic import TRAFFIC_SCENARIOS

    runner = CliRunner()
    shown = runner.invoke(app, ["incident", "--help"], terminal_width=200).output
    assert all(name in shown for name in TRAFFIC_SCENARIOS if name != "none"), shown
    refused = runner.invoke(app, ["incident", "flood", "--duration", "1"])
    assert refused.exit_code == 1 and "choose one of" in refused.output and "invalid_rows" in refused.output
