"""`sandbox up --local / status / down` with real supervisord and a real MLflow server."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from sandbox import local_stack
from sandbox.settings import Settings
from services.serving.rows import EXAMPLE_ROW
from tests.support.processes import free_port, wait_until

pytestmark = pytest.mark.integration
SANDBOX = str(Path(sys.executable).parent / "sandbox")


SERVICES = ("mlflow", "serving", "monitor", "retrainer", "prometheus", "alertmanager")


def stack_env(home) -> dict:
    """A stack of its own: a state dir and a free port for every service."""
    ports = {f"SANDBOX_{name.upper()}_PORT": str(free_port()) for name in SERVICES}
    return {**os.environ, "SANDBOX_HOME": str(home), "SANDBOX_SERVING_POLL_SECONDS": "1", **ports}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = stack_env(tmp_path_factory.mktemp("stack"))
    yield env
    subprocess.run([SANDBOX, "down"], env=env, timeout=60)


def cli(env, *args, timeout=300):
    return subprocess.run([SANDBOX, *args], env=env, capture_output=True, text=True, timeout=timeout)


def settings_of(env) -> Settings:
    return Settings(home=Path(env["SANDBOX_HOME"]), mlflow_port=int(env["SANDBOX_MLFLOW_PORT"]))


def mlflow_row(env) -> dict:
    result = cli(env, "status", "--json")
    return next(r for r in json.loads(result.stdout)["services"] if r["name"] == "mlflow")


def test_up_is_healthy_and_idempotent(env):
    first = cli(env, "up")
    assert first.returncode == 0, first.stderr
    row = mlflow_row(env)
    assert row["state"] == "RUNNING" and row["healthy"]
    second = cli(env, "up")
    assert second.returncode == 0, second.stderr
    assert mlflow_row(env)["pid"] == row["pid"], "a second up must not start MLflow again"
    supervisors = [p for p in local_stack.stack_processes(settings_of(env)) if "supervisord" in p.name()]
    assert len(supervisors) == 1


def test_train_through_the_cli(env):
    result = cli(env, "train", "--n-rows", "5000", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) >= {"run_id", "model_version", "metrics", "promoted", "champion_version"}
    assert summary["promoted"] is True and summary["champion_version"] == summary["model_version"]
    assert summary["metrics"]["roc_auc"] > 0.75
    status = json.loads(cli(env, "status", "--json").stdout)
    assert status["champion"]["version"] == summary["model_version"]
    assert status["alerts"] == [], "a clean stack fires nothing"


def test_serving_in_the_stack_answers_sandbox_predict(env, tmp_path):
    assert wait_until(
        lambda: (json.loads(cli(env, "status", "--json").stdout).get("served") or {}).get("version") == "1",
        timeout=90,
        interval=1,
    )
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([EXAMPLE_ROW, {**EXAMPLE_ROW, "credit_score": 420, "debt_to_income": 1.2}]))
    result = cli(env, "predict", "--file", str(rows), "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert [r["model_version"] for r in answer] == ["1", "1"]
    assert answer[1]["probability"] > answer[0]["probability"]  # a poor score and heavy debt look riskier
    monitor = f"http://127.0.0.1:{env['SANDBOX_MONITOR_PORT']}/api/status"
    assert wait_until(lambda: httpx.get(monitor, timeout=5).json()["store"]["records"] >= 2, 30, interval=1)
    rows.write_text(json.dumps({"rows": [{**EXAMPLE_ROW, "age": "old"}]}))
    bad = cli(env, "predict", "--file", str(rows))
    assert bad.returncode == 1 and "rows.0.age" in bad.stderr and "Traceback" not in bad.stderr


def test_traffic_reaches_serving_and_labels_reach_the_monitor(env):
    status = f"http://127.0.0.1:{env['SANDBOX_MONITOR_PORT']}/api/status"
    before = httpx.get(status, timeout=5).json()["store"]
    result = cli(
        env,
        "traffic",
        "--rps",
        "10",
        "--duration",
        "4",
        "--label-delay",
        "1",
        "--scenario",
        "new_category",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] == summary["requests"] > 5 and summary["failed"] == {}
    assert summary["labels_sent"] == summary["rows"] and summary["versions"] == {"1": summary["rows"]}

    def stored():
        after = httpx.get(status, timeout=5).json()["store"]
        return (
            after["records"] - before["records"] == summary["rows"]
            and after["labelled"] - before["labelled"] == summary["rows"]
        )

    assert wait_until(stored, timeout=30, interval=1)


def test_bad_parameters_give_a_clear_error_and_no_traceback(env, tmp_path):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,2\n")
    cases = [
        (["--n-rows", "0"], "--n-rows must be positive"),
        (["--scenario", "tsunami"], "unknown scenario 'tsunami'"),
        (["--source", "csv", "--csv-path", str(tmp_path / "none.csv")], "CSV file not found"),
        (
            ["--source", "csv", "--csv-path", str(bad_csv)],
            "does not fit the loan schema: missing column(s) age",
        ),
    ]
    for args, message in cases:
        result = cli(env, "train", *args)
        assert result.returncode != 0
        assert message in " ".join(result.stderr.split()), (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_train_without_mlflow_says_to_start_the_stack(env):
    result = cli({**env, "SANDBOX_MLFLOW_PORT": str(free_port())}, "train")
    assert result.returncode == 1
    assert "sandbox up --local" in result.stderr and "Traceback" not in result.stderr


def test_prometheus_scrapes_the_stack_and_loads_the_rules(env):
    prometheus = f"http://127.0.0.1:{env['SANDBOX_PROMETHEUS_PORT']}"

    def scraped():
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        return {t["labels"]["job"] for t in targets if t["health"] == "up"} >= {
            "serving",
            "monitor",
            "alertmanager",
        }

    assert wait_until(scraped, timeout=60, interval=1)
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"][0]["rules"]
    assert {r["name"] for r in rules} >= {"DataDriftDetected", "ServingDown", "MonitorStale"}

    def champion_is_scraped():
        query = {"query": 'sandbox_model_info{job="serving"} == 1'}
        return httpx.get(f"{prometheus}/api/v1/query", params=query, timeout=5).json()["data"]["result"]

    assert wait_until(champion_is_scraped, timeout=60, interval=1)


def test_killed_mlflow_is_restarted(env):
    before = mlflow_row(env)
    os.killpg(before["pid"], signal.SIGKILL)
    assert wait_until(lambda: (r := mlflow_row(env))["healthy"] and r["pid"] != before["pid"], 90, 1), (
        "supervisord restarts it"
    )


def test_up_recovers_from_a_crashed_supervisor(env):
    settings = settings_of(env)
    supervisord = int(local_stack.pid_path(settings).read_text())
    os.kill(supervisord, signal.SIGKILL)  # its MLflow child lives on as an orphan holding the port
    psutil.Process(supervisord).wait(10) if psutil.pid_exists(supervisord) else None
    result = cli(env, "up")
    assert result.returncode == 0, result.stderr
    assert mlflow_row(env)["healthy"]
    assert int(local_stack.pid_path(settings).read_text()) != supervisord


def test_taken_port_is_named(env, tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        other = {
            **env,
            "SANDBOX_HOME": str(tmp_path / "other"),
            "SANDBOX_MLFLOW_PORT": str(port),
            "SANDBOX_SERVING_PORT": str(free_port()),
        }
        result = cli(other, "up", timeout=60)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"port {port} for mlflow is taken" in message and "SANDBOX_MLFLOW_PORT" in message


def test_down_leaves_no_process_behind(env):
    settings = settings_of(env)
    assert local_stack.stack_processes(settings)
    result = cli(env, "down")
    assert result.returncode == 0
    assert local_stack.stack_processes(settings) == []
    status = cli(env, "status", "--json")
    assert status.returncode == 1 and json.loads(status.stdout)["services"][0]["state"] == "STOPPED"
