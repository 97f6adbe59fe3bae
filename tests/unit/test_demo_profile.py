"""The demo's profile: short intervals reach the services and the rendered monitoring config, not monitoring/."""

import yaml

from sandbox.demo import DEMO_OVERRIDES, demo_settings, profile_env
from sandbox.local_stack import MONITORING, programs, render_config, render_monitoring_config
from sandbox.settings import Settings


def test_profile_env_carries_the_service_settings_only(tmp_path):
    env = profile_env(demo_settings(Settings(home=tmp_path)))
    assert env["SANDBOX_MONITOR_INTERVAL_SECONDS"] == "5"
    assert (
        env["SANDBOX_RETRAIN_DRIFT_REFERENCE_ROWS"] == "2000" and env["SANDBOX_SERVING_POLL_SECONDS"] == "2"
    )
    # Prometheus/Alertmanager timings are rendered into their files, not passed as environment.
    assert not any(k.startswith(("SANDBOX_ALERT", "SANDBOX_ALERTMANAGER")) for k in env)


def test_a_profile_changes_exactly_the_service_programs(tmp_path):
    settings = Settings(home=tmp_path)
    render_monitoring_config(settings)
    plain = {p.name: p for p in programs(settings)}
    demo = {p.name: p for p in programs(settings, profile_env(demo_settings(settings)))}
    changed = {name for name in plain if plain[name] != demo[name]}
    assert {"serving", "monitor", "retrainer"} <= changed and "mlflow" not in changed
    assert 'SANDBOX_MONITOR_MIN_ROWS="1500"' in render_config(settings, list(demo.values()))
    assert demo["serving"].env["OMP_NUM_THREADS"] == "1"


def test_alert_for_overrides_go_to_rendered_copies(tmp_path):
    settings = demo_settings(Settings(home=tmp_path))
    original = (MONITORING / "prometheus" / "rules" / "sandbox.yml").read_text()
    prometheus_path, alertmanager_path = render_monitoring_config(settings)
    rule_glob = yaml.safe_load(prometheus_path.read_text())["rule_files"][0]
    assert rule_glob.startswith(str(tmp_path))
    rules = yaml.safe_load((tmp_path / "prometheus" / "rules" / "sandbox.yml").read_text())
    durations = {r["alert"]: r.get("for") for g in rules["groups"] for r in g["rules"]}
    assert durations["DataDriftDetected"] == DEMO_OVERRIDES["alert_for_overrides"]["DataDriftDetected"]
    assert durations["ServingDown"] == "1m"  # untouched
    route = yaml.safe_load(alertmanager_path.read_text())["route"]
    assert route["group_wait"] == "1s" and route["routes"][0]["group_interval"] == "5s"
    assert (MONITORING / "prometheus" / "rules" / "sandbox.yml").read_text() == original


def test_without_overrides_prometheus_reads_monitoring_rules(tmp_path):
    prometheus_path, _ = render_monitoring_config(Settings(home=tmp_path))
    assert yaml.safe_load(prometheus_path.read_text())["rule_files"] == [
        str(MONITORING / "prometheus" / "rules" / "*.yml")
    ]
