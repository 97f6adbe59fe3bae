"""The demo's profile: short intervals reach the services and the rendered monitoring config, not monitoring/."""

from pathlib import Path

import pytest
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
    assert env["SANDBOX_RELEASE_BAKE_SECONDS"] == "30" and env["SANDBOX_RELEASE_POLL_SECONDS"] == "2"
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


def test_the_upstream_bug_story_shares_the_opening_and_holds_instead_of_retraining(tmp_path):
    from sandbox.demo import QUALITY_ALERT, Demo, DemoResult, Timeline

    settings = demo_settings(Settings(home=tmp_path))
    drift, bug = Demo(settings, Timeline()), Demo(settings, Timeline(), story="upstream-bug")
    names = lambda demo: [step.__name__ for step in demo.steps()]  # noqa: E731
    assert names(drift)[:4] == names(bug)[:4] == ["start_stack", "train_v1", "start_traffic", "clean_traffic"]
    assert names(drift)[4:] == ["incident", "retraining", "live_gate", "recovery", "bake"]
    assert names(bug)[4:] == ["upstream_bug", "retraining_held", "upstream_fixed"]
    release = Demo(settings, Timeline(), story="bad-release")
    assert names(release)[4:] == ["bad_release", "bad_release_rejected", "late_regression", "rolled_back"]
    # Its bake outlasts the launch's first labelled rows; the other stories keep the demo's 30 s.
    assert demo_settings(Settings(home=tmp_path), story="bad-release").release_bake_seconds == 60
    assert settings.release_bake_seconds == DEMO_OVERRIDES["release_bake_seconds"] == 30
    assert settings.alert_for_overrides[QUALITY_ALERT] == "10s"
    summary = DemoResult(
        completed=True, story="upstream-bug", quality_alert_s=12.5, retrained=False
    ).summary()
    assert summary["quality_alert_s"] == 12.5 and summary["retrained"] is False
    with pytest.raises(ValueError, match="upstream-bug"):
        Demo(settings, Timeline(), story="typo")


def test_the_demo_cli_refuses_an_unknown_story():
    from typer.testing import CliRunner

    from sandbox.cli import app

    result = CliRunner().invoke(app, ["demo", "--story", "typo"])
    assert result.exit_code == 1 and "covariate-shift, upstream-bug" in result.output


def test_a_step_that_times_out_says_where_to_look(tmp_path):
    import re

    from sandbox import demo as demo_module
    from sandbox.demo import Demo, DemoError, Timeline
    from tests.support.processes import free_port

    port = free_port()  # nothing listens there, even while a stack runs on the default ports
    demo = Demo(demo_settings(Settings(home=tmp_path, prometheus_port=port)), Timeline())
    with pytest.raises(
        DemoError, match=rf"alert fires: did not happen within 0s; see http://127.0.0.1:{port}/alerts"
    ):
        demo.wait("alert fires", lambda: None, timeout=0)
    # Every step the demo waits on names a page or a log when it times out.
    source = Path(demo_module.__file__).read_text()
    calls = []
    for start in (m.end() for m in re.finditer(r"self\.wait\(", source)):
        depth, end = 1, start
        while depth:
            depth += {"(": 1, ")": -1}.get(source[end], 0)
            end += 1
        call = source[start:end]
        literal = re.match(r"\s*f?\"([^\"]+)\"", call)  # a step named by a variable must pass a hint
        name = literal.group(1) if literal else call.split(",")[0].strip()
        for constant in ("QUALITY_ALERT", "ROLLBACK_ALERT"):
            name = name.replace(f"{{{constant}}}", getattr(demo_module, constant))
        calls.append((name, "hint=" in call))
    assert len(calls) >= 10
    assert [name for name, hinted in calls if not hinted and not demo.where_to_look(name)] == []


def test_run_calls_after_step_after_each_step_and_stops_at_a_failed_one(tmp_path, monkeypatch):
    from sandbox.demo import Demo, DemoError, Timeline

    settings = demo_settings(Settings(home=tmp_path, prometheus_port=1))  # no Prometheus: no report plots
    done: list[str] = []

    def ok():
        done.append("ok ran")

    def broken():
        raise DemoError("broken", "did not happen")

    demo = Demo(settings, Timeline())
    monkeypatch.setattr(demo, "steps", lambda: [ok, broken, ok])
    result = demo.run(after_step=lambda name: done.append(f"after {name}"))
    assert done == ["ok ran", "after ok"]  # nothing after the failed step, not even its hook
    assert not result.completed and result.failed_step == "broken"


def test_the_demo_cli_runs_each_story_with_its_own_settings(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from sandbox import demo as demo_module
    from sandbox.cli import app

    seen = {}

    def run_demo(settings, timeline, **options):
        seen[options["story"]] = settings.release_bake_seconds
        return demo_module.DemoResult(completed=True, story=options["story"])

    monkeypatch.setenv("SANDBOX_HOME", str(tmp_path))
    monkeypatch.setattr(demo_module, "run_demo", run_demo)
    for story in ("covariate-shift", "bad-release"):
        assert CliRunner().invoke(app, ["demo", "--story", story]).exit_code == 0
    assert seen == {"covariate-shift": 30, "bad-release": 60}


def test_a_bake_that_ends_otherwise_than_rolled_back_fails_its_step_and_pauses_the_launch(
    tmp_path, monkeypatch
):
    from sandbox import demo as demo_module
    from sandbox.demo import LAUNCH, Demo, DemoError, Timeline

    outcomes = [{"version": "3", "outcome": "done", "reason": "baked 60s with no degradation", "at": 1.0}]
    monkeypatch.setattr(demo_module, "release_status", lambda settings: {"outcomes": outcomes})
    demo = Demo(demo_settings(Settings(home=tmp_path, prometheus_port=1), story="bad-release"), Timeline())
    demo.late_version, demo.result.champion_before = "3", "1"
    demo.control.switch(LAUNCH, 1.0)
    with pytest.raises(DemoError, match="^bake rolls back: v3 ended done: baked 60s") as raised:
        demo.rolled_back()
    assert raised.value.step == "bake rolls back" and demo.control.scenario == "none"


@pytest.mark.parametrize(
    "story, alert",
    [("covariate-shift", "DataDriftDetected"), ("upstream-bug", "DataQualityDegraded"),
     ("bad-release", "ModelRolledBack")],
)  # fmt: skip
def test_the_report_plots_the_alert_its_story_turns_on(tmp_path, monkeypatch, story, alert):
    from sandbox import demo as demo_module
    from sandbox.demo import Demo, Timeline

    plotted = []
    monkeypatch.setattr(
        demo_module,
        "write_report",
        lambda settings, timeline, result, alert: plotted.append(alert) or "r.html",
    )
    demo = Demo(
        demo_settings(Settings(home=tmp_path, prometheus_port=1), story=story), Timeline(), story=story
    )
    monkeypatch.setattr(demo, "steps", lambda: [])
    assert demo.run().report == "r.html" and plotted == [alert]


def test_an_earlier_runs_state_is_moved_aside_not_deleted(tmp_path, monkeypatch):
    from sandbox import local_stack

    settings = Settings(home=tmp_path)
    assert local_stack.move_state_aside(settings) is None  # a fresh home: nothing to move
    stopped = []
    monkeypatch.setattr(local_stack, "down", lambda s: stopped.append(s.home))
    for name in ("mlflow/mlflow.db", "monitor/monitor.db", "retrainer/release.json", "logs/serving.log",
                 "reports/demo-1.html", "kind/state", "incidents.jsonl"):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    moved = local_stack.move_state_aside(settings)
    assert stopped == [tmp_path] and moved.parent == tmp_path / "past-runs"
    assert (moved / "mlflow" / "mlflow.db").read_text() == "mlflow/mlflow.db"
    assert (moved / "incidents.jsonl").exists() and (moved / "logs" / "serving.log").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kind", "past-runs", "reports"]
    assert (tmp_path / "reports" / "demo-1.html").exists()  # what people open stays where it was
    assert local_stack.move_state_aside(settings) is None  # moved once: the next start is fresh
