"""A missing Prometheus or Alertmanager is named with the fix, by `up`, `status` and the demo, not found at a timeout."""

import os
import stat

import pytest
from typer.testing import CliRunner

from sandbox import local_stack
from sandbox.cli import app
from sandbox.demo import Demo, DemoError, Timeline, demo_settings
from sandbox.settings import Settings


def path_with(tmp_path, *names: str) -> str:
    """A PATH holding only executables called ``names`` (plus nothing else the stack looks for)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        tool = bin_dir / name
        tool.write_text("#!/bin/sh\n")
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return str(bin_dir)


@pytest.mark.parametrize(
    "present, missing",
    [
        ((), ["prometheus", "alertmanager"]),
        (("prometheus",), ["alertmanager"]),
        (("prometheus", "prometheus-alertmanager"), []),
        (("prometheus", "alertmanager"), []),  # Homebrew's and upstream's name
    ],
)
def test_missing_monitoring_names_what_is_not_on_path(tmp_path, monkeypatch, present, missing):
    monkeypatch.setenv("PATH", path_with(tmp_path, *present))
    assert local_stack.missing_monitoring() == missing
    names = {p.name for p in local_stack.programs(Settings(home=tmp_path / "home"))}
    assert not names & set(missing)


def test_the_demo_stops_at_once_naming_the_binary_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", path_with(tmp_path, "prometheus"))
    demo = Demo(demo_settings(Settings(home=tmp_path / "home")), Timeline())
    with pytest.raises(DemoError) as raised:
        demo.start_stack()
    message = str(raised.value)
    assert "alertmanager not found on PATH" in message and "make setup" in message
    assert "prometheus not found" not in message
    assert not (tmp_path / "home" / "supervisor").exists()  # nothing was started


def test_status_with_nothing_running_says_how_to_start(tmp_path):
    env = {**os.environ, "SANDBOX_HOME": str(tmp_path / "home")}
    result = CliRunner().invoke(app, ["status"], env=env)
    assert result.exit_code == 1
    assert "nothing is running" in result.output and "sandbox up --local" in result.output


def test_status_json_lists_missing_binaries(tmp_path):
    env = {**os.environ, "SANDBOX_HOME": str(tmp_path / "home"), "PATH": path_with(tmp_path)}
    result = CliRunner().invoke(app, ["status", "--json"], env=env)
    assert '"missing_binaries": ["prometheus", "alertmanager"]' in result.output
