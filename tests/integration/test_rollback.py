"""`sandbox release status` and `sandbox rollback` for real: a uvicorn retrainer, a real MLflow and
`bentoml serve` (shadow, live gate and bake on real traffic: test_release.py)."""

import json
import os
import subprocess
import sys
import threading

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tests.integration.serving_helpers import MonitorStandIn, every_worker_serves, register, register_broken
from tests.integration.test_retrainer import start
from tests.support.processes import free_port, stop_process_group, wait_until
from tests.support.servers import served

pytestmark = pytest.mark.integration
MODEL = "release-it"
EXAMPLE = {"age": 41, "income": 52000.0, "loan_amount": 12000.0, "loan_term_months": 36, "credit_score": 690,
           "debt_to_income": 0.31, "employment_years": 6.5, "num_credit_lines": 5, "region": "north",
           "home_ownership": "rent", "purpose": "car"}  # fmt: skip


@pytest.fixture(scope="module")
def stack(mlflow_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("release")
    monitor = MonitorStandIn(
        free_port()
    )  # serving's feed goes somewhere; the controller reads nothing in idle
    env = {
        "SANDBOX_HOME": str(home),
        "SANDBOX_MLFLOW_TRACKING_URI": mlflow_server,
        "SANDBOX_MODEL_NAME": MODEL,
        "SANDBOX_MONITOR_PORT": str(monitor.port),
        "SANDBOX_RETRAINER_PORT": str(free_port()),
        "SANDBOX_PROMETHEUS_PORT": str(free_port()),
        "SANDBOX_RELEASE_POLL_SECONDS": "1",
        "SANDBOX_SERVING_POLL_SECONDS": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    v1 = register(mlflow_server, MODEL, seed=0)
    retrainer = start("services.retrainer.app:create_app", int(env["SANDBOX_RETRAINER_PORT"]), env,
                      home / "retrainer.log")  # fmt: skip
    url = f"http://127.0.0.1:{env['SANDBOX_RETRAINER_PORT']}"
    try:
        assert wait_until(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, 120)
        with served(env, home) as serving:
            assert wait_until(lambda: httpx.get(f"{serving}/readyz").status_code == 200, timeout=120)
            yield {"env": env, "retrainer": url, "serving": serving, "v1": v1, "home": home}
    finally:
        stop_process_group(retrainer)
        monitor.stop()


def sandbox(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sandbox.cli", *args], env={**os.environ, **env, "COLUMNS": "200"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_release_status_is_idle_with_the_champion(stack):
    assert wait_until(
        lambda: httpx.get(f"{stack['retrainer']}/api/release", timeout=5).json()["polls"] > 0, 60
    )
    done = sandbox(stack["env"], "release", "status", "--json")
    assert done.returncode == 0, done.stderr
    release = json.loads(done.stdout)
    assert release["phase"] == "idle" and release["champion"] == stack["v1"] and release["alive"]
    assert "release: idle" in sandbox(stack["env"], "release", "status").stdout


def test_rollback_refuses_what_cannot_serve(stack, mlflow_server):
    env = stack["env"]
    for args, message in [
        ((), "no `previous` version"),
        (("--to", "99"), "has no version 99"),
        (("--to", "9" * 30), "is not a version number"),  # refused before MLflow, which answers 500 to it
        (("--to", "v2"), "is not a version number: pass one like 3"),
        (("--to", stack["v1"]), "already the champion"),
    ]:
        done = sandbox(env, "rollback", *args)
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    broken = register_broken(mlflow_server, MODEL)  # made champion by the helper: put v1 back first
    MlflowClient(mlflow_server).set_registered_model_alias(MODEL, "champion", stack["v1"])
    done = sandbox(env, "rollback", "--to", broken, "--json")
    assert (
        done.returncode == 1 and "does not load or fails the smoke test" in json.loads(done.stdout)["error"]
    )
    assert MlflowClient(mlflow_server).get_model_version_by_alias(MODEL, "champion").version == stack["v1"]


def test_rollback_under_load_has_zero_failed_requests(stack, mlflow_server):
    client = MlflowClient(mlflow_server)
    v2 = register(mlflow_server, MODEL, seed=3)  # the helper makes it champion: a promotion by hand
    client.set_registered_model_alias(MODEL, "previous", stack["v1"])
    serving = stack["serving"]
    assert wait_until(lambda: every_worker_serves(serving, v2), 60)
    answers, stop = [], threading.Event()

    def load():
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                response = http.post(f"{serving}/predict", json={"rows": [EXAMPLE] * 8})
                version = response.json()[0]["model_version"] if response.is_success else None
                answers.append((response.status_code, version))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        done = sandbox(stack["env"], "rollback", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"champion": stack["v1"], "was": v2,
                                           "reason": f"rolled back by hand from v{v2} to v{stack['v1']}"}  # fmt: skip
        assert wait_until(lambda: answers and answers[-1][1] == stack["v1"], 60)
        wait_until(lambda: False, 2)  # a little more traffic on v1
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    failed = [status for status, _ in answers if status != 200]
    assert len(answers) > 50 and failed == [], (len(answers), failed[:5])
    assert {version for _, version in answers} == {v2, stack["v1"]}
    assert client.get_model_version_by_alias(MODEL, "champion").version == stack["v1"]
    assert client.get_model_version_by_alias(MODEL, "previous").version == v2
    assert "rolled back by hand" in client.get_model_version(MODEL, v2).tags["rolled_back"]
    metrics = httpx.get(f"{stack['retrainer']}/metrics", timeout=10).text
    assert "sandbox_release_rollbacks_total 1.0" in metrics
    assert "v" + v2 + " rolled_back" in sandbox(stack["env"], "release", "status").stdout
