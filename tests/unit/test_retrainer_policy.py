"""The retrainer's policy and HTTP behaviour, with a recording pipeline runner (the real run is in integration)."""

import threading

import pytest
from fastapi.testclient import TestClient

from pipelines.result import TrainResult
from sandbox.settings import Settings
from services.retrainer.app import create_app, unix_seconds
from services.retrainer.policy import SKIP, TRIGGER, alert_key, decide


def alert(
    status="firing",
    name="DataDriftDetected",
    fingerprint="abc",
    starts="2026-11-24T10:00:00Z",
    action="retrain",
):
    labels = {"alertname": name, **({"action": action} if action else {})}
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "Data drift: 18% of features drifted"},
        "startsAt": starts,
        "fingerprint": fingerprint,
    }


def notification(*alerts, status=None):
    alerts = alerts or (alert(),)
    return {
        "version": "4",
        "status": status or alerts[0]["status"],
        "receiver": "retrainer",
        "alerts": list(alerts),
    }


@pytest.mark.parametrize(
    ("note", "running", "last", "recent", "expected"),
    [
        (notification(alert(status="resolved")), False, None, {}, (SKIP, "resolved")),
        (notification(alert(action=None)), False, None, {}, (SKIP, "resolved")),  # not ours to act on
        (notification(), True, None, {}, (SKIP, "in_progress")),
        (notification(), False, 990.0, {"abc@2026-11-24T10:00:00Z": 990.0}, (SKIP, "duplicate")),
        (
            notification(alert(fingerprint="other")),
            False,
            990.0,
            {"abc@2026-11-24T10:00:00Z": 990.0},
            (SKIP, "cooldown"),
        ),
        (notification(), False, None, {}, (TRIGGER, "alert")),
        # Still firing after the cooldown: the last retraining did not fix it, so try again.
        (notification(), False, 100.0, {"abc@2026-11-24T10:00:00Z": 100.0}, (TRIGGER, "alert")),
    ],
)
def test_policy(note, running, last, recent, expected):
    decision = decide(note, running, last, recent, now=1000.0, cooldown_seconds=600)
    assert (decision.action, decision.reason) == expected


def test_a_release_in_progress_holds_a_new_retraining_but_not_a_resolution():
    """While a challenger is judged in shadow the alert keeps firing on the champion's traffic."""
    assert (
        decide(notification(), False, None, {}, 1000.0, 600, releasing=True).reason == "release_in_progress"
    )
    assert decide(notification(), True, None, {}, 1000.0, 600, releasing=True).reason == "in_progress"
    resolved = notification(alert(status="resolved"))
    assert decide(resolved, False, None, {}, 1000.0, 600, releasing=True).reason == "resolved"
    assert decide(notification(), False, None, {}, 1000.0, 600, releasing=False).action == TRIGGER


def test_policy_picks_the_fresh_alert_of_a_group():
    old, new = alert(fingerprint="old"), alert(fingerprint="new")
    decision = decide(notification(old, new), False, None, {alert_key(old): 990.0}, 1000.0, 600)
    assert decision.action == TRIGGER and decision.alert["fingerprint"] == "new"


class RecordingRunner:
    """Stands in for the pipeline run: records the parameters, answers like the gate, can fail or block."""

    def __init__(self, result=None, error=None):
        self.calls, self.result, self.error = [], result, error
        self.release = threading.Event()
        self.release.set()

    def run(self, params, on_step=None, log_name=None):
        self.calls.append(params)
        self.release.wait(10)
        if self.error:
            raise self.error
        return self.result or TrainResult(
            run_id="r", model_name="loan-default", model_version="2", metrics={}, promoted=True,
            reason="ok", champion_version="2",
        )  # fmt: skip


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path, retrain_cooldown_seconds=600, monitor_port=18001)


def client_for(settings, runner):
    app = create_app(settings, runner=runner, release_controller=False)
    return TestClient(app), app.state.retrainer


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_a_firing_alert_starts_one_retraining_on_production_data(settings):
    runner = RecordingRunner()
    client, retrainer = client_for(settings, runner)
    answer = client.post("/alerts", json=notification())
    retrainer.wait_idle(10)
    assert answer.status_code == 202 and answer.json()["action"] == "trigger"
    (params,) = runner.calls
    assert params.source == "production" and params.trigger == "alert:DataDriftDetected"
    assert params.monitor_url == "http://127.0.0.1:18001"
    assert '"fingerprint": "abc"' in params.trigger_info
    assert params.drift_reference_since == unix_seconds("2026-11-24T10:00:00Z") > 0
    status = client.get("/api/status").json()
    assert status["running"] is None and status["last"]["state"] == "promoted"
    assert status["last"]["model_version"] == "2"

    # The same alert again (Alertmanager re-sends the group) and then its resolution start nothing.
    assert client.post("/alerts", json=notification()).json()["reason"] == "duplicate"
    assert client.post("/alerts", json=notification(alert(status="resolved"))).json()["reason"] == "resolved"
    assert client.post("/alerts", json=notification(alert(fingerprint="f2"))).json()["reason"] == "cooldown"
    assert len(runner.calls) == 1
    text = client.get("/metrics").text
    assert metric(text, "sandbox_retrain_triggers_total") == 1
    assert metric(text, 'sandbox_retrain_skips_total{reason="duplicate"}') == 1
    assert metric(text, 'sandbox_retrain_skips_total{reason="cooldown"}') == 1
    assert metric(text, 'sandbox_retrain_runs_total{outcome="promoted"}') == 1


def test_an_alert_during_a_run_is_skipped_as_in_progress(settings):
    runner = RecordingRunner()
    runner.release.clear()
    client, retrainer = client_for(settings, runner)
    client.post("/alerts", json=notification())
    assert client.get("/healthz").json()["running"] is True
    assert client.post("/alerts", json=notification(alert(fingerprint="x"))).json()["reason"] == "in_progress"
    runner.release.set()
    retrainer.wait_idle(10)
    assert len(runner.calls) == 1


def test_a_failed_run_is_counted_and_shown(settings):
    client, retrainer = client_for(
        settings, RecordingRunner(error=RuntimeError("step 'load-data' failed: too few"))
    )
    client.post("/alerts", json=notification())
    retrainer.wait_idle(10)
    status = client.get("/api/status").json()
    assert status["last"]["state"] == "failed" and "too few" in status["last"]["error"]
    text = client.get("/metrics").text
    assert metric(text, "sandbox_retrain_failures_total") == 1
    assert metric(text, "sandbox_retrain_in_progress") == 0


def test_cooldown_and_history_survive_a_restart(settings):
    client, retrainer = client_for(settings, RecordingRunner())
    client.post("/alerts", json=notification())
    retrainer.wait_idle(10)
    runner = RecordingRunner()
    client, _ = client_for(settings, runner)  # a new process, same home
    assert client.post("/alerts", json=notification()).json()["reason"] == "duplicate"
    assert client.get("/api/status").json()["last"]["state"] == "promoted" and runner.calls == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"status": "firing", "alerts": []}, "alerts"),
        ({"status": "exploded", "alerts": [alert()]}, "status"),
        ({"status": "firing", "alerts": [{"status": "firing", "labels": {}}]}, "alerts.0"),
        ([1, 2], "body"),
    ],
)
def test_a_payload_that_is_not_alertmanagers_is_422_with_the_reason(settings, body, needle):
    runner = RecordingRunner()
    client, _ = client_for(settings, runner)
    answer = client.post("/alerts", json=body)
    assert answer.status_code == 422 and needle in answer.json()["error"]
    assert runner.calls == []


def test_garbage_json_is_422(settings):
    client, _ = client_for(settings, RecordingRunner())
    answer = client.post("/alerts", content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 422 and "Alertmanager" in answer.json()["error"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25T00:11:46.465123456Z", 1795565506.465123),  # Alertmanager sends nanoseconds
        ("2026-11-25T00:11:46Z", 1795565506.0),
        ("2026-11-25T01:11:46+01:00", 1795565506.0),
        ("not a time", 0.0),
        ("", 0.0),
    ],
)
def test_unix_seconds(text, expected):
    assert unix_seconds(text) == pytest.approx(expected)


# --- the data-quality guard and the human receiver --------------------------------------------------

FAILED = {
    "ok": False, "evaluated_at": 1000.0, "rows": 1500, "model_version": "1",
    "failed": [{"check": "scale", "feature": "income", "value": 52.3, "reference": 51800.0, "threshold": 10.0,
                "message": "income: median 52.3 vs 51,800 in the reference, x0.001"}],
}  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "holds"),
    [
        ({"quality": FAILED}, True),
        ({"quality": {**FAILED, "ok": True, "failed": []}}, False),
        ({"quality": {**FAILED, "ok": None}}, False),  # nothing judged yet
        ({"drift": {}}, False),  # a monitor without quality checks
        (None, False),  # no answer: the run needs the monitor's rows and fails visibly in load-data
    ],
)
def test_quality_hold(answer, holds):
    from services.retrainer.policy import quality_hold

    reason = quality_hold(answer)
    assert (reason is not None) == holds
    if holds:
        assert "income: median 52.3 vs 51,800" in reason


def fake_monitor(quality: dict | None, asked: list):
    import httpx

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(200, json={"drift": {}, **({"quality": quality} if quality else {})})

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_a_failed_data_quality_verdict_holds_the_retraining_and_records_it(settings):
    runner, asked = RecordingRunner(), []
    app = create_app(settings, runner=runner, monitor=fake_monitor(FAILED, asked), release_controller=False)
    client = TestClient(app)
    answer = client.post("/alerts", json=notification())
    assert answer.status_code == 202
    assert answer.json() == {"action": "skip", "reason": "data_quality", "alertname": "DataDriftDetected"}
    assert runner.calls == [] and asked == ["http://127.0.0.1:18001/api/status"]
    (held,) = client.get("/api/status").json()["held"]
    assert held["skipped"] == "data_quality" and held["alertname"] == "DataDriftDetected"
    assert held["failed"][0]["feature"] == "income" and "x0.001" in held["reason"]
    assert metric(client.get("/metrics").text, 'sandbox_retrain_skips_total{reason="data_quality"}') == 1
    # Not a duplicate later: once the data is clean again, the same alert still firing retrains.
    app.state.retrainer.monitor = fake_monitor({**FAILED, "ok": True, "failed": []}, asked)
    assert client.post("/alerts", json=notification()).json()["action"] == "trigger"
    app.state.retrainer.wait_idle(10)
    assert len(runner.calls) == 1
    # A restart keeps what was held.
    again = TestClient(
        create_app(
            settings, runner=RecordingRunner(), monitor=fake_monitor(None, []), release_controller=False
        )
    )
    assert again.get("/api/status").json()["held"][0]["skipped"] == "data_quality"


def test_quality_degraded_on_clean_data_still_retrains(settings):
    runner = RecordingRunner()
    clean = {**FAILED, "ok": True, "failed": []}
    client = TestClient(
        create_app(settings, runner=runner, monitor=fake_monitor(clean, []), release_controller=False)
    )
    answer = client.post("/alerts", json=notification(alert(name="ModelQualityDegraded")))
    client.app.state.retrainer.wait_idle(10)
    assert answer.json()["action"] == "trigger" and runner.calls[0].trigger == "alert:ModelQualityDegraded"


def page(status="firing"):
    return notification(
        {**alert(status=status, name="DataQualityDegraded", action="page"),
         "annotations": {"summary": "Data quality failed", "runbook": "docs/runbooks/DataQualityDegraded.md"}},
    )  # fmt: skip


def test_the_human_receiver_records_pages_and_never_retrains(settings):
    runner = RecordingRunner()
    client = TestClient(
        create_app(settings, runner=runner, monitor=fake_monitor(None, []), release_controller=False)
    )
    first = client.post("/notifications", json=page())
    assert first.status_code == 202 and first.json()["alerts"] == 1
    assert client.post("/notifications", json=page("resolved")).status_code == 202
    notes = client.get("/api/status").json()["notifications"]
    assert [n["status"] for n in notes] == ["resolved", "firing"]  # newest first
    assert notes[1]["alerts"][0] == {
        "alertname": "DataQualityDegraded", "status": "firing", "severity": "", "summary": "Data quality failed",
        "runbook": "docs/runbooks/DataQualityDegraded.md", "starts_at": "2026-11-24T10:00:00Z", "ends_at": "",
        "fingerprint": "abc",
    }  # fmt: skip
    assert runner.calls == []
    text = client.get("/metrics").text
    assert metric(text, 'sandbox_human_notifications_total{status="firing"}') == 1
    restarted = TestClient(
        create_app(settings, runner=runner, monitor=fake_monitor(None, []), release_controller=False)
    )
    assert len(restarted.get("/api/status").json()["notifications"]) == 2


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"status": "firing", "alerts": []}, "alerts"),
        ({"version": "3", "status": "firing", "alerts": [alert()]}, "version"),
        ({"status": "firing", "alerts": [{**alert(), "labels": {"severity": "critical"}}]}, "alertname"),
        ({"status": "firing"}, "alerts"),
        ("page me", "body"),
    ],
)
def test_bad_input_to_the_human_receiver_is_422_with_the_reason_and_nothing_recorded(settings, body, needle):
    client = TestClient(
        create_app(
            settings, runner=RecordingRunner(), monitor=fake_monitor(None, []), release_controller=False
        )
    )
    answer = client.post("/notifications", json=body)
    assert answer.status_code == 422 and needle in answer.json()["error"], answer.json()
    assert client.get("/api/status").json()["notifications"] == []
    assert not (settings.home / "retrainer" / "notifications.jsonl").exists()


def test_sandbox_status_prints_the_pages_and_the_held_retrainings(settings):
    from sandbox import cli

    client = TestClient(
        create_app(
            settings, runner=RecordingRunner(), monitor=fake_monitor(FAILED, []), release_controller=False
        )
    )
    client.post("/notifications", json=page())
    client.post("/alerts", json=notification())
    status = client.get("/api/status").json()
    with cli.console.capture() as captured:
        cli.print_pages(status["notifications"], status["held"])
    text = captured.get()
    assert "paged" in text and "DataQualityDegraded firing: Data quality failed" in text
    assert "docs/runbooks/DataQualityDegraded.md" in text
    assert "retraining held" in text and "DataDriftDetected" in text and "x0.001" in text
