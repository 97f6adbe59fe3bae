"""The monitor's and the retrainer's OpenAPI say what they answer: checked in the document, then by
schemathesis against each as a real process (serving's run is in test_serving.py)."""

import re
import subprocess
import sys
import tempfile

import httpx
import pytest

from sandbox.local_stack import venv_bin
from sandbox.settings import Settings
from tests.support.processes import free_port, start_process_group, stop_process_group, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# The real retrainer app with a stand-in pipeline: a fuzzed alert may well say action=retrain.
RETRAINER = """
import sys, uvicorn
from pipelines.result import TrainResult
from sandbox.settings import Settings
from services.retrainer.app import create_app

class Runner:
    def run(self, params, on_step=None, log_name=None):
        return TrainResult("r", params.model_name, "2", {}, False, "stand-in", "1")

uvicorn.run(create_app(Settings(), runner=Runner()), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def content_types(spec: dict, path: str, method: str) -> dict[str, list[str]]:
    responses = spec["paths"][path][method]["responses"]
    return {status: sorted(r.get("content", {})) for status, r in responses.items()}


def test_the_documents_name_every_answer_and_its_content_type(tmp_path):
    from services.monitor.app import create_app as monitor_app
    from services.retrainer.app import create_app as retrainer_app

    settings = Settings(home=tmp_path)
    monitor = monitor_app(settings).openapi()
    retrainer = retrainer_app(settings, runner=None).openapi()  # the runner is never called here
    json, html, text = ["application/json"], ["text/html"], ["text/plain"]
    for spec in (monitor, retrainer):
        assert content_types(spec, "/metrics", "get") == {"200": text}
    assert content_types(monitor, "/", "get") == {"200": html}
    assert content_types(monitor, "/reports/latest", "get") == {"200": html, "404": json, "500": json}
    guarded = {"400": json, "413": json, "415": json, "422": json}
    assert content_types(monitor, "/ingest", "post") == {"200": json, **guarded}
    assert content_types(monitor, "/labels", "post") == {"200": json, **guarded}
    assert content_types(retrainer, "/alerts", "post") == {"202": json, **guarded}
    # A 422 is our error body (the reasons), not FastAPI's default {"detail": ...}.
    schema = monitor["paths"]["/ingest"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ValidationErrorBody"}
    assert monitor["components"]["schemas"]["ValidationErrorBody"]["required"] == [
        "error",
        "errors",
        "error_count",
    ]


@pytest.fixture(scope="module")
def services(tmp_path_factory, mlflow_server):
    """The monitor as the stack runs it (no MLflow: its page says unreachable) and the retrainer, with
    MLflow (an empty registry: a fuzzed rollback is refused for what it asks, not for MLflow down)."""
    home = tmp_path_factory.mktemp("openapi")
    ports = {"monitor": free_port(), "retrainer": free_port()}
    env = {
        "SANDBOX_HOME": str(home),
        "SANDBOX_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",  # nothing listens
        "SANDBOX_ALERTMANAGER_PORT": str(free_port()),
        "SANDBOX_MONITOR_PORT": str(ports["monitor"]),
        "SANDBOX_RETRAINER_PORT": str(ports["retrainer"]),
        "SANDBOX_MONITOR_INTERVAL_SECONDS": "2",  # evaluations run while the fuzzer writes
        "SANDBOX_RETRAIN_COOLDOWN_SECONDS": "1",
    }
    uvicorn = [venv_bin("uvicorn"), "services.monitor.app:create_app", "--factory"]
    procs = [
        start_process_group(
            [*uvicorn, "--host", "127.0.0.1", "--port", str(ports["monitor"])], home / "monitor.log", env
        ),
        start_process_group(
            [sys.executable, "-c", RETRAINER, str(ports["retrainer"])],
            home / "retrainer.log",
            {**env, "SANDBOX_MLFLOW_TRACKING_URI": mlflow_server},
        ),  # fmt: skip
    ]
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    try:
        for name, url in urls.items():
            ok = wait_until(lambda u=url: httpx.get(f"{u}/healthz", timeout=2).status_code == 200, 180)
            assert ok, (home / f"{name}.log").read_text()[-3000:]
        yield {**urls, "home": home}
    finally:
        for proc in procs:
            stop_process_group(proc)


@pytest.mark.parametrize("name", ["monitor", "retrainer"])
def test_schemathesis_finds_no_server_error_nor_undocumented_answer(services, name):
    with tempfile.TemporaryDirectory() as reports:
        result = subprocess.run(
            [
                venv_bin("st"), "run", f"{services[name]}/openapi.json",
                "--checks", CHECKS, "--max-examples", "40", "--max-time", "60", "--request-timeout", "30",
                "--workers", "1", "--suppress-health-check", "all", "--report-dir", reports,
            ],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    log = (services["home"] / f"{name}.log").read_text()
    assert result.returncode == 0, result.stdout[-6000:] + log[-2000:]
    assert "Traceback" not in log, log[-4000:]
    generated = re.search(r"(\d+) generated", result.stdout)
    assert generated and int(generated[1]) > 50, result.stdout[-2000:]
    print(f"schemathesis on the {name}: {generated[1]} cases, no failure")
