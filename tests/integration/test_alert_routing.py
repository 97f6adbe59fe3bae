"""Alertmanager's routing as rendered for the embedded stack, with the real binary and a real retrainer:
pages reach the human receiver, and a data-quality alert inhibits the retrain route."""

import datetime as dt
import time

import httpx
import pytest

from sandbox.local_stack import alertmanager_binary, render_monitoring_config
from sandbox.settings import Settings
from tests.integration.serving_helpers import metric_value
from tests.integration.test_retrainer import start
from tests.support.processes import free_port, start_process_group, stop_process_group, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def routing(tmp_path_factory):
    binary = alertmanager_binary()
    if binary is None:
        pytest.fail(
            "alertmanager is missing: run `make setup` (Debian: apt-get install prometheus-alertmanager)"
        )
    home = tmp_path_factory.mktemp("routing")
    settings = Settings(
        home=home, alertmanager_port=free_port(), retrainer_port=free_port(), monitor_port=free_port(),
        alertmanager_group_wait="1s", alertmanager_group_interval="2s",
    )  # fmt: skip
    _, config = render_monitoring_config(settings)
    env = {"SANDBOX_HOME": str(home), "SANDBOX_MONITOR_PORT": str(settings.monitor_port)}
    retrainer = start(
        "services.retrainer.app:create_app", settings.retrainer_port, env, home / "retrainer.log"
    )
    alertmanager = start_process_group(
        [binary, f"--config.file={config}", f"--storage.path={home / 'am'}",
         f"--web.listen-address=127.0.0.1:{settings.alertmanager_port}", "--cluster.listen-address="],
        home / "alertmanager.log",
    )  # fmt: skip
    try:
        for url in (f"{settings.retrainer_url}/healthz", f"{settings.alertmanager_url}/-/ready"):
            assert wait_until(lambda u=url: httpx.get(u, timeout=2).status_code == 200, 60), url
        yield settings
    finally:
        stop_process_group(alertmanager)
        stop_process_group(retrainer)


def fire(settings: Settings, name: str, action: str, **labels) -> None:
    now = dt.datetime.now(dt.UTC)
    alert = {
        "labels": {"alertname": name, "action": action, "severity": "warning", **labels},
        "annotations": {"summary": f"{name} for the test", "runbook": f"docs/runbooks/{name}.md"},
        "startsAt": now.isoformat(), "endsAt": (now + dt.timedelta(minutes=5)).isoformat(),
    }  # fmt: skip
    assert (
        httpx.post(f"{settings.alertmanager_url}/api/v2/alerts", json=[alert], timeout=5).status_code == 200
    )


def retrainer_status(settings: Settings) -> dict:
    return httpx.get(f"{settings.retrainer_url}/api/status", timeout=5).json()


def test_a_quality_alert_pages_the_human_receiver_and_inhibits_drift(routing):
    fire(routing, "DataQualityDegraded", "page", severity="critical")

    def paged():
        notes = retrainer_status(routing)["notifications"]
        return notes and notes[0]["alerts"][0]["alertname"] == "DataQualityDegraded"

    assert wait_until(paged, timeout=30), retrainer_status(routing)
    assert retrainer_status(routing)["notifications"][0]["receiver"] == "human"

    fire(routing, "DataDriftDetected", "retrain")

    def inhibited():
        alerts = httpx.get(f"{routing.alertmanager_url}/api/v2/alerts", timeout=5).json()
        drift = [a for a in alerts if a["labels"]["alertname"] == "DataDriftDetected"]
        return drift and drift[0]["status"]["inhibitedBy"]

    assert wait_until(inhibited, timeout=15)
    # Several group intervals later the retrainer still never heard of the drift alert.
    time.sleep(6)
    metrics = httpx.get(f"{routing.retrainer_url}/metrics", timeout=5).text
    assert metric_value(metrics, "sandbox_retrain_notifications_total") == 0
    status = retrainer_status(routing)
    assert status["running"] is None and status["history"] == [] and status["held"] == []


def test_input_rejections_page_too(routing):
    fire(routing, "InputRejectionsHigh", "page")

    def paged():
        return any(
            a["alertname"] == "InputRejectionsHigh"
            for n in retrainer_status(routing)["notifications"]
            for a in n["alerts"]
        )

    assert wait_until(paged, timeout=30), retrainer_status(routing)
