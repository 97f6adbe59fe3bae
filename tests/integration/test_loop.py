"""The whole loop on real components: `sandbox demo --json` on a stack of its own (free ports).

Real MLflow, `bentoml serve`, monitor, retrainer, Prometheus and Alertmanager under supervisord;
kfp.local runs both trainings. The demo itself checks that clean traffic fires nothing (three
full-window verdicts with drift share 0 and no alert) before the incident starts.
"""

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from sandbox.local_stack import alertmanager_binary
from sandbox.report import figure_of, final_drift
from tests.integration.test_local_stack import SANDBOX, stack_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.skipif(
    not (shutil.which("prometheus") and alertmanager_binary()),
    reason="needs Prometheus and Alertmanager (`make setup` installs them on Debian/Ubuntu)",
)
@pytest.mark.timeout(1800)
def test_drift_alert_retrains_promotes_swaps_and_resolves(tmp_path):
    env = stack_env(tmp_path / "stack")
    try:
        done = subprocess.run(
            [SANDBOX, "demo", "--json", "--timeout", "420"],
            env={**env, "COLUMNS": "160"}, capture_output=True, text=True, timeout=1700,
        )  # fmt: skip
        lines = done.stdout.strip().splitlines()
        assert lines, f"the demo printed no summary (exit {done.returncode}):\n{done.stderr[-4000:]}"
        summary = json.loads(lines[-1])
        assert done.returncode == 0 and summary["completed"], done.stderr[-4000:]
        for line in done.stderr.splitlines():  # the live timeline, for the test log
            print(line)
        assert int(summary["champion_after"]) > int(summary["champion_before"])
        assert 0 < summary["time_to_detect_s"] < summary["time_to_recover_s"]
        assert summary["time_to_retrain_s"] > 0
        # The release: v2 proved itself in shadow on live rows, then baked and was kept.
        assert summary["shadow_s"] > 0 and summary["bake_s"] > 0, summary
        assert "promote" in summary["live_gate"] and "paired rows" in summary["live_gate"], summary
        # Zero failed requests across the whole run: start-up (a worker without the model holds the
        # request), the swap, and the retraining competing for the CPU.
        assert summary["requests"] > 1000 and summary["failed_requests"] == 0, summary
        report = Path(summary["report"])
        assert report.is_file() and "DataDriftDetected" in report.read_text()
        # The report plots the recovery: its last drift share is 0 (the report waited for Prometheus
        # to scrape v2's verdict), and every panel's query found real series.
        figure = figure_of(report.read_text())
        assert final_drift(figure)[1] == 0.0, final_drift(figure)
        plotted: dict[str, list[float]] = {}
        for trace in figure["data"]:
            panel = (trace.get("meta") or {}).get("panel") or trace["name"]
            plotted.setdefault(panel, []).extend(y for y in trace["y"] if y is not None)
        assert all(plotted.values()) and len(plotted) == 6, {k: len(v) for k, v in plotted.items()}
        assert max(plotted["requests/s"]) > 10
        alert_state = next(t["y"] for t in figure["data"] if t["name"] == "DataDriftDetected state")
        assert max(alert_state) == 2 and alert_state[-1] == 0  # fired, then resolved
        assert "DataDriftDetected resolved" in next(
            t["text"] for t in figure["data"] if t["name"] == "events"
        )
        # The alert went to the retrainer and the run is tagged with it.
        ports = {k: v for k, v in env.items() if k.endswith("_PORT")}
        status = httpx.get(
            f"http://127.0.0.1:{ports['SANDBOX_RETRAINER_PORT']}/api/status", timeout=10
        ).json()
        assert status["last"]["alertname"] == "DataDriftDetected" and status["last"]["state"] == "promoted"
        served = httpx.get(f"http://127.0.0.1:{ports['SANDBOX_SERVING_PORT']}/model", timeout=10).json()
        assert served["version"] == summary["champion_after"]
    finally:
        subprocess.run([SANDBOX, "down"], env=env, timeout=120)
        artifacts = Path("test-artifacts")
        artifacts.mkdir(exist_ok=True)
        for report in (tmp_path / "stack" / "reports").glob("demo-*.html"):
            shutil.copy(report, artifacts / report.name)
