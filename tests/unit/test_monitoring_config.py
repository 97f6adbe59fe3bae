"""The monitoring configs with the real promtool / amtool (installed by `make setup`)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sandbox.local_stack import MONITORING, render_monitoring_config
from sandbox.names import REPO_ROOT
from sandbox.settings import Settings

RULES = MONITORING / "prometheus" / "rules" / "sandbox.yml"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is missing: run `make setup` (Debian: apt-get install prometheus prometheus-alertmanager)"
        )
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_promtool_unit_tests_of_every_rule():
    output = run(
        tool("promtool"), "test", "rules", str(MONITORING / "prometheus" / "tests" / "sandbox-test.yml")
    )
    assert "SUCCESS" in output.stdout
    tested = set(
        re.findall(
            r"alertname: (\w+)", (MONITORING / "prometheus" / "tests" / "sandbox-test.yml").read_text()
        )
    )
    alerts = {
        rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    }
    assert alerts == {
        "DataDriftDetected",
        "ModelQualityDegraded",
        "ServingDown",
        "HighPredictionLatency",
        "MonitorStale",
        "DataQualityDegraded",
        "InputRejectionsHigh",
        "ModelRolledBack",
    }
    assert tested == alerts, "every alert needs a promtool case"


def test_every_alert_has_a_runbook():
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            runbook = REPO_ROOT / rule["annotations"]["runbook"]
            assert runbook.is_file(), runbook
            text = runbook.read_text()
            assert all(
                section in text for section in ("## What it means", "## How to confirm", "## What to do")
            )


def test_rendered_configs_are_valid_and_use_the_configured_ports(tmp_path):
    settings = Settings(home=tmp_path, serving_port=3111, retrainer_port=8111, alertmanager_port=9111)
    prometheus, alertmanager = render_monitoring_config(settings)
    run(tool("promtool"), "check", "config", str(prometheus))
    run(tool("amtool"), "check-config", str(alertmanager))
    config = yaml.safe_load(prometheus.read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets["serving"] == ["127.0.0.1:3111"] and targets["retrainer"] == ["127.0.0.1:8111"]
    hooks = {
        receiver["name"]: [h["url"] for h in receiver.get("webhook_configs", [])]
        for receiver in yaml.safe_load(alertmanager.read_text())["receivers"]
    }
    assert hooks == {
        "default": [],
        "human": ["http://127.0.0.1:8111/notifications"],
        "retrainer": ["http://127.0.0.1:8111/alerts"],
    }


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=DataDriftDetected", "action=retrain"], "retrainer"),
        (["alertname=ModelQualityDegraded", "action=retrain"], "retrainer"),
        (["alertname=ServingDown", "severity=critical"], "default"),
        # Broken data pages a human and never reaches the retrainer.
        (["alertname=DataQualityDegraded", "action=page", "severity=critical"], "human"),
        (["alertname=InputRejectionsHigh", "action=page", "severity=warning"], "human"),
        # A rollback already undid the harm; a person finds out why the version passed both gates.
        (["alertname=ModelRolledBack", "action=page", "severity=warning"], "human"),
    ],
)
def test_alertmanager_routes_retrain_alerts_to_the_retrainer_and_pages_to_a_human(labels, receiver):
    config = str(MONITORING / "alertmanager" / "alertmanager.yml")
    output = run(tool("amtool"), "config", "routes", "test", f"--config.file={config}", *labels)
    assert output.stdout.strip() == receiver


def test_every_sandbox_metric_a_rule_uses_is_exported_by_a_service():
    used = set(re.findall(r"\b(sandbox_[a-z_]+)\b", RULES.read_text()))
    source = "\n".join(p.read_text() for p in Path(REPO_ROOT / "services").rglob("*.py"))
    missing = [name for name in used if f'"{name}"' not in source]
    assert used and not missing, missing


def test_data_quality_alerts_page_and_inhibit_every_retrain_alert():
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    quality = ("DataQualityDegraded", "InputRejectionsHigh")
    for name in quality:
        assert rules[name]["labels"]["action"] == "page" and rules[name]["labels"]["severity"]
        assert rules[name]["for"]
    (inhibit,) = yaml.safe_load((MONITORING / "alertmanager" / "alertmanager.yml").read_text())[
        "inhibit_rules"
    ]
    assert inhibit["target_matchers"] == ['action="retrain"'] and not inhibit.get("equal")
    (source,) = inhibit["source_matchers"]
    pattern = re.fullmatch(r'alertname=~"(.+)"', source)[1]
    inhibited = {name for name, rule in rules.items() if re.fullmatch(pattern, name)}
    assert inhibited == set(quality)
    retrain = {name for name, rule in rules.items() if rule["labels"].get("action") == "retrain"}
    assert retrain == {"DataDriftDetected", "ModelQualityDegraded"}
