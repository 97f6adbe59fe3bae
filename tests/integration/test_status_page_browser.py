"""The monitor's status page in a real headless Chromium, against a real monitor, MLflow and Alertmanager.

The page is rendered by the browser (DOM as Chromium built it, and a screenshot), before any traffic
and during a drift incident with an alert firing. Screenshots are kept in test-artifacts/.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid

import httpx
import pytest

from pipelines.data import generate_loans
from pipelines.features import LABEL, LOAN_SCHEMA
from pipelines.scenarios import apply_scenario
from pipelines.train import features_only
from sandbox.local_stack import alertmanager_binary, venv_bin
from tests.integration.serving_helpers import register
from tests.support.browser import ARTIFACTS, pixels_near, render, skip_without_chromium, text_of
from tests.support.processes import free_port, start_process_group, stop_process_group, wait_http, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "status-page-it"
DRIFT_RED = (0xC6, 0x28, 0x28)  # the verdict badge of a drifted window (services/monitor/app.py)
skip_without_chromium()


def records(frame, version: str) -> list[dict]:
    """Inference records as serving sends them (the DESIGN contract); every third prediction is wrong."""
    features = features_only(frame, LOAN_SCHEMA)
    rows = features.astype(object).where(features.notna(), None).to_dict(orient="records")
    out = []
    for i, (row, label) in enumerate(zip(rows, frame[LABEL].astype(int), strict=True)):
        prediction = 1 - label if i % 3 == 0 else label
        out.append(
            {
                "request_id": uuid.uuid4().hex, "ts": time.time(), "model_version": version, "features": row,
                "prediction": prediction, "probability": 0.8 if prediction else 0.2, "label": label,
            }
        )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def stack(mlflow_server, tmp_path_factory):
    """The monitor as the stack runs it (uvicorn --factory), a real Alertmanager it reads alerts from,
    and a champion registered in MLflow (while the monitor starts)."""
    binary = alertmanager_binary()
    if binary is None:
        pytest.fail(
            "alertmanager is missing: run `make setup` (Debian: apt-get install prometheus-alertmanager)"
        )
    home = tmp_path_factory.mktemp("status-page")
    am_port, monitor_port = free_port(), free_port()
    (home / "alertmanager.yml").write_text("route:\n  receiver: default\nreceivers:\n  - name: default\n")
    env = {
        "SANDBOX_HOME": str(home),
        "SANDBOX_MLFLOW_TRACKING_URI": mlflow_server,
        "SANDBOX_MODEL_NAME": MODEL,
        "SANDBOX_ALERTMANAGER_PORT": str(am_port),
        "SANDBOX_RETRAINER_PORT": str(free_port()),  # nothing listens: not a stack running on 8002
        "SANDBOX_MONITOR_INTERVAL_SECONDS": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        return start_process_group(cmd, home / f"{name}.log", env)

    procs = [
        start("alertmanager", [
            binary, f"--config.file={home / 'alertmanager.yml'}", f"--storage.path={home / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
        ]),
        start("monitor", [
            venv_bin("uvicorn"), "services.monitor.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(monitor_port),
        ]),
    ]  # fmt: skip
    monitor = f"http://127.0.0.1:{monitor_port}"
    try:
        version = register(mlflow_server, MODEL, seed=0)
        wait_http(f"http://127.0.0.1:{am_port}/-/ready", timeout=60)
        wait_http(f"{monitor}/healthz", timeout=240)
        yield {"monitor": monitor, "alertmanager": f"http://127.0.0.1:{am_port}", "version": version}
    finally:
        for proc in procs:
            stop_process_group(proc)
        ARTIFACTS.mkdir(exist_ok=True)
        for log in home.glob("*.log"):  # next to the screenshots, for a failure's post-mortem
            shutil.copy(log, ARTIFACTS / f"status-page-{log.name}")


def status(stack) -> dict:
    return httpx.get(f"{stack['monitor']}/api/status", timeout=30).json()


def test_before_any_traffic_the_page_shows_the_champion_and_no_verdict(stack, tmp_path):
    version = stack["version"]
    assert wait_until(
        lambda: (
            ((status(stack)["models"] or {}).get("champion") or {}).get("version") == version
            and status(stack)["alerts"] == []
        ),
        timeout=120,
    ), status(stack)
    dom, image = render(stack["monitor"] + "/", "status-page-before", tmp_path / "profile")

    assert f"<title>monitor · {MODEL}</title>" in dom
    assert re.search(r'<span class="verdict">(not evaluated yet|insufficient data)</span>', dom), dom
    assert re.search(rf"<td>champion</td><td>{version}</td><td>[^<]*roc_auc", dom), dom
    text = text_of(dom)
    assert "no per-feature verdict" in text and "none firing" in text and "DRIFTED" not in text
    assert image.size == (1280, 1600)
    assert len(image.getcolors(maxcolors=1280 * 1600)) > 20, "a blank screenshot: nothing rendered"
    assert pixels_near(image, DRIFT_RED) < 50, "no red drift badge before any traffic"


def test_during_an_incident_the_page_shows_the_drift_the_champion_and_the_alert(stack, tmp_path):
    version = stack["version"]
    frame = generate_loans(1_600, seed=21)  # a window the monitor judges (min 1,500 rows)
    for scenario in ("covariate_shift", "new_category"):
        frame = apply_scenario(frame, scenario, 1.5, seed=21)
    sent = records(frame, version)
    for batch in (sent[:800], sent[800:]):
        assert (
            httpx.post(f"{stack['monitor']}/ingest", json={"records": batch}, timeout=60).status_code == 200
        )
    labels = [{"request_id": r["request_id"], "label": r["label"]} for r in sent[:300]]
    assert httpx.post(f"{stack['monitor']}/labels", json={"labels": labels}, timeout=30).status_code == 200
    alert = {
        "labels": {"alertname": "DataDriftDetected", "severity": "warning", "action": "retrain"},
        "annotations": {"summary": "Data drift"},
    }
    assert httpx.post(f"{stack['alertmanager']}/api/v2/alerts", json=[alert], timeout=10).status_code == 200

    def drifted_and_alerted() -> bool:
        now = status(stack)
        return (now["drift"] or {}).get("verdict") == "drift" and any(
            a["name"] == "DataDriftDetected" for a in now["alerts"] or []
        )

    assert wait_until(drifted_and_alerted, timeout=240, interval=1), status(stack)
    dom, image = render(stack["monitor"] + "/", "status-page-drift", tmp_path / "profile")

    assert '<span class="verdict">DRIFT</span>' in dom, dom
    assert re.search(rf"<td>champion</td><td>{version}</td>", dom), dom
    # Chromium's DOM quotes the attribute the server wrote bare (class=drifted): the browser built it.
    drifted = set(re.findall(r'<tr class="drifted"><td>(\w+)</td>', dom))
    assert {"credit_score", "debt_to_income", "region"} <= drifted, drifted
    assert "age" not in drifted
    text = text_of(dom)
    assert f"1600 rows of version {version}" in text, text
    assert "DataDriftDetected (warning, active)" in text, text
    # Every third prediction was wrong: 200 of the 300 labelled rows right.
    assert re.search(r"accuracy 0\.667 , F1 \d\.\d{3} on 300 labelled rows", text), text
    # The badge is drawn in the drift colour: the stylesheet applied, not just the markup.
    assert image.size == (1280, 1600)
    assert pixels_near(image, DRIFT_RED) > 1_000, "no red DRIFT badge in the screenshot"
