"""The incident stories' stack: one embedded stack per module (free ports, the demo's short intervals).

Real MLflow, `bentoml serve`, monitor, retrainer, Prometheus and Alertmanager under supervisord;
kfp.local trains. The steps are the demo's own (sandbox/demo.py: each waits for the real signal and
fails naming itself); the tests assert each incident's outcome from the outside as well. The table
is split in two modules, so that `make test` runs them side by side (each is minutes of waiting):
test_incidents_quality.py (what pages a human) and test_incidents_release.py (what retrains or releases).

| incident | alert | told | retrains | champion |
|---|---|---|---|---|
| clean traffic | none | nobody | no | v1 |
| invalid_rows flood | InputRejectionsHigh | the human receiver | no | v1 |
| unit_change | DataQualityDegraded | the human receiver | no (held) | v1 |
| a release trained on broken labels (label_bug) | none | nobody | - | v1 (the live gate rejects it) |
| a release trained for a launch with broken labels (launch_label_bug), then the launch | ModelRolledBack | the human receiver | - | v1 (its bake rolls it back) |
| covariate_shift | DataDriftDetected | the retrainer | yes | v2 (shadow, live gate, bake) |
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from sandbox import local_stack, status
from sandbox.demo import Demo, Timeline, demo_settings, retraining_since
from sandbox.local_stack import alertmanager_binary
from sandbox.settings import Settings
from tests.integration.test_local_stack import SERVICES
from tests.support.processes import free_port

PYTESTMARK = [
    pytest.mark.integration,
    pytest.mark.slow,  # the loop's story under incidents: minutes
    pytest.mark.timeout(2400),
]
REJECTIONS_ALERT = "InputRejectionsHigh"


def incident_stack(tmp_path_factory, story: str) -> Iterator[Demo]:
    """The body of a module's ``demo`` fixture: a stack of its own with v1 trained and traffic flowing."""
    if not (shutil.which("prometheus") and alertmanager_binary()):
        pytest.fail("needs Prometheus and Alertmanager: run `make setup` (Debian: apt-get install prometheus prometheus-alertmanager)")  # fmt: skip
    # The services read their settings from the environment supervisord passes on: a stack of its own.
    env = pytest.MonkeyPatch()
    env.setenv("SANDBOX_HOME", str(tmp_path_factory.mktemp("incidents")))
    for name in SERVICES:
        env.setenv(f"SANDBOX_{name.upper()}_PORT", str(free_port()))
    settings = demo_settings(Settings(), story=story)  # its timings, e.g. the bad release's longer bake
    timeline = Timeline(on_event=lambda e: print(f"{e['t']:7.1f}s  {e['event']}  {e['detail']}"))
    demo = Demo(settings, timeline, timeout=420, on_status=print)
    try:
        for step in (demo.start_stack, demo.train_v1, demo.start_traffic):
            step()
        yield demo
    finally:
        demo.stop_traffic()
        local_stack.down(settings)
        env.undo()


def firing(settings: Settings) -> set[str]:
    return {a["name"] for a in status.firing_alerts(settings) or []}


def clean_traffic_fires_nothing(demo: Demo) -> None:
    """Every module's first story: three full-window verdicts, drift share 0, no alert, no retraining."""
    demo.clean_traffic()
    settings = demo.settings
    assert firing(settings) == set()
    assert status.monitor_status(settings)["quality"]["ok"] is True
    assert retraining_since(settings, 0) is None
