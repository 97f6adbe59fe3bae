"""The retrainer for real: a uvicorn process, a real monitor with production records, a real MLflow,
and train-and-register run through kfp.local on an Alertmanager-shaped notification."""

import subprocess
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from pipelines.data import generate_loans
from pipelines.scenarios import apply_scenario
from sandbox.local_stack import venv_bin
from tests.integration.serving_helpers import metric_value, register
from tests.integration.test_monitor import ingest, records_of
from tests.support.processes import free_port, start_process_group, stop_process_group, wait_until

pytestmark = pytest.mark.integration
MODEL = "retrain-it"


def start(app: str, port: int, env: dict, log_path, append: bool = False) -> subprocess.Popen:
    """A service as the stack runs it: ``uvicorn <app> --factory`` on 127.0.0.1:``port``."""
    cmd = [venv_bin("uvicorn"), app, "--factory", "--host", "127.0.0.1", "--port", str(port)]
    return start_process_group(cmd, log_path, env, append=append)


def notification(fingerprint: str, status: str = "firing") -> dict:
    alert = {
        "status": status,
        "labels": {"alertname": "DataDriftDetected", "action": "retrain", "severity": "warning"},
        "annotations": {"summary": "Data drift: 18% of features drifted"},
        "startsAt": "2026-11-24T10:00:00Z",
        "fingerprint": fingerprint,
    }
    return {"version": "4", "status": status, "receiver": "retrainer", "alerts": [alert]}


@pytest.fixture(scope="module")
def stack(mlflow_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("retrainer")
    monitor_port, retrainer_port = free_port(), free_port()
    env = {
        "SANDBOX_HOME": str(home),
        "SANDBOX_MLFLOW_TRACKING_URI": mlflow_server,
        "SANDBOX_MODEL_NAME": MODEL,
        "SANDBOX_MONITOR_PORT": str(monitor_port),
        # Judged often: a retraining reads only records of windows the monitor judged clean.
        "SANDBOX_MONITOR_INTERVAL_SECONDS": "1",
        "SANDBOX_ALERTMANAGER_PORT": str(free_port()),
        "SANDBOX_RETRAIN_COOLDOWN_SECONDS": "5",
        "SANDBOX_RETRAIN_MIN_PRODUCTION_ROWS": "300",
        "SANDBOX_RETRAIN_DRIFT_REFERENCE_ROWS": "1200",
        "SANDBOX_RETRAIN_CLEAN_ROWS": "3000",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    procs = [
        start("services.monitor.app:create_app", monitor_port, env, home / "monitor.log"),
        start("services.retrainer.app:create_app", retrainer_port, env, home / "retrainer.log"),
    ]
    urls = {"monitor": f"http://127.0.0.1:{monitor_port}", "retrainer": f"http://127.0.0.1:{retrainer_port}"}
    try:
        for url in urls.values():
            assert wait_until(lambda u=url: httpx.get(f"{u}/healthz", timeout=2).status_code == 200, 120)
        yield {**urls, "home": home, "v1": register(mlflow_server, MODEL, seed=0)}
    finally:
        for proc in procs:
            stop_process_group(proc)


def status(stack) -> dict:
    return httpx.get(f"{stack['retrainer']}/api/status", timeout=10).json()


def wait_finished(stack, run_id: str, timeout: float = 600) -> dict:
    def done():
        s = status(stack)
        return s["running"] is None and s["last"] and s["last"]["id"] == run_id

    assert wait_until(done, timeout, interval=2), (stack["home"] / "retrainer.log").read_text()[-3000:]
    return status(stack)["last"]


def test_without_labelled_production_data_the_run_fails_in_load_data_and_is_counted(stack):
    answer = httpx.post(f"{stack['retrainer']}/alerts", json=notification("no-data"), timeout=10)
    assert answer.status_code == 202 and answer.json()["action"] == "trigger"
    run = wait_finished(stack, answer.json()["run"], timeout=300)
    assert run["state"] == "failed"
    assert "load-data" in run["error"] and "labelled production records" in run["error"]
    metrics = httpx.get(f"{stack['retrainer']}/metrics", timeout=10).text
    assert metric_value(metrics, "sandbox_retrain_failures_total") == 1


def test_an_alert_retrains_on_production_data_tagged_with_the_alert(stack, mlflow_server):
    from mlflow.tracking import MlflowClient

    clean = generate_loans(600, seed=11)
    shifted = apply_scenario(generate_loans(1400, seed=12), "covariate_shift", 1.0, seed=12)
    records = records_of(clean, stack["v1"]) + records_of(shifted, stack["v1"])
    ingest(stack["monitor"], records)
    labels = [{"request_id": r["request_id"], "label": r["label"]} for r in records]
    assert httpx.post(f"{stack['monitor']}/labels", json={"labels": labels}, timeout=60).status_code == 200
    time.sleep(5)  # past the cooldown the failed run started
    # A retraining reads judged records only: wait for an evaluation that started after the ingest.
    t0 = time.time()

    def judged() -> bool:
        text = httpx.get(f"{stack['monitor']}/metrics", timeout=10).text
        return metric_value(text, "sandbox_monitor_last_evaluation_timestamp_seconds") > t0

    assert wait_until(judged, 120), httpx.get(f"{stack['monitor']}/api/status", timeout=10).text

    answer = httpx.post(f"{stack['retrainer']}/alerts", json=notification("drift-1"), timeout=10).json()
    assert answer["action"] == "trigger"
    again = httpx.post(f"{stack['retrainer']}/alerts", json=notification("drift-1"), timeout=10).json()
    assert again["action"] == "skip" and again["reason"] in ("in_progress", "duplicate")
    run = wait_finished(stack, answer["run"])
    # A champion exists: passing the offline gate makes a challenger in shadow, never a swap.
    assert run["state"] in ("shadow", "rejected"), (run.get("error"), Path(run["log"]).read_text()[-3000:])
    assert run["path"][0]["step"] == "offline gate" and run["path"][0]["outcome"] == run["state"]

    client = MlflowClient(mlflow_server)
    version = client.get_model_version(MODEL, run["model_version"])
    tags = client.get_run(version.run_id).data.tags
    assert tags["trigger"] == "alert:DataDriftDetected" and tags["trigger.fingerprint"] == "drift-1"
    assert tags["source"] == "production"
    # The new version's drift reference is the latest 1,200 records served: all shifted.
    path = client.download_artifacts(version.run_id, "reference/reference.parquet")
    reference = pd.read_parquet(path)
    assert len(reference) == 1200
    assert reference["credit_score"].mean() < clean["credit_score"].mean() - 40
    # Trained on production (2,000 labelled) + 1,000 clean rows: the params say so.
    params = client.get_run(version.run_id).data.params
    assert params["source"] == "production"
    metrics = httpx.get(f"{stack['retrainer']}/metrics", timeout=10).text
    assert metric_value(metrics, "sandbox_retrain_triggers_total") == 2
    assert metric_value(metrics, "sandbox_retrain_runs_total", outcome="failed") == 1
    assert client.get_model_version_by_alias(MODEL, "champion").version == stack["v1"]
    if run["state"] == "shadow":
        assert client.get_model_version_by_alias(MODEL, "challenger").version == run["model_version"]
        # The release controller took it into shadow (the monitor holds no paired rows here: it waits).
        assert wait_until(
            lambda: httpx.get(f"{stack['retrainer']}/api/release", timeout=10).json()["phase"] == "shadow", 30
        ), httpx.get(f"{stack['retrainer']}/api/release", timeout=10).json()
