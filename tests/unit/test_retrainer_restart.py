"""A retraining interrupted by a restart of the retrainer is recorded as failed and retried.

The runner is a small fake (the pipeline itself runs in tests/integration and tests/chaos);
the history file is the real one the retrainer writes.
"""

import json
import threading
import time

from pipelines.result import TrainResult
from sandbox.settings import Settings
from services.retrainer.app import Retrainer, RetrainerMetrics

ALERT = {
    "status": "firing",
    "labels": {"alertname": "DataDriftDetected", "action": "retrain"},
    "annotations": {},
    "startsAt": "2026-12-01T09:00:00Z",
    "fingerprint": "abc",
}


class Runner:
    def __init__(self, block: bool = False):
        self.calls, self.release = [], threading.Event()
        if not block:
            self.release.set()

    def run(self, params, on_step=None, log_name=None) -> TrainResult:
        self.calls.append(log_name)
        assert self.release.wait(10)
        return TrainResult("run", "m", "2", {"roc_auc": 0.9}, True, "better", "2")


def records(settings: Settings) -> list[dict]:
    path = settings.home / "retrainer" / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def notify() -> dict:
    return {"version": "4", "status": "firing", "alerts": [ALERT]}


def test_a_start_is_written_before_the_run_ends(tmp_path):
    settings = Settings(home=tmp_path)
    runner = Runner(block=True)
    retrainer = Retrainer(settings, runner, RetrainerMetrics())
    started = retrainer.handle(notify())
    assert [(r["id"], r["state"]) for r in records(settings)] == [(started["run"], "running")]
    assert records(settings)[0]["alert"]["fingerprint"] == "abc"  # what a restart needs to retry it
    runner.release.set()
    retrainer.wait_idle(10)
    assert [r["state"] for r in records(settings)] == ["running", "promoted"]
    # A restart after a finished run retries nothing and keeps the cooldown.
    again = Retrainer(settings, Runner(), RetrainerMetrics())
    assert again.running is None and again.status()["last"]["state"] == "promoted"
    assert again.handle(notify())["reason"] == "duplicate"


def test_a_restart_records_the_interrupted_run_as_failed_and_retries_it(tmp_path):
    settings = Settings(home=tmp_path)
    first = Retrainer(settings, Runner(block=True), RetrainerMetrics())
    interrupted = first.handle(notify())["run"]  # the process "dies" here: nothing more is written
    time.sleep(0.002)  # run ids are milliseconds
    runner = Runner()
    restarted = Retrainer(settings, runner, RetrainerMetrics())
    restarted.wait_idle(10)
    status = restarted.status()
    failed = next(r for r in status["history"] if r["id"] == interrupted)
    assert failed["state"] == "failed" and "interrupted" in failed["error"]
    retry = status["last"]
    assert retry["resumes"] == interrupted and retry["state"] == "promoted" and len(runner.calls) == 1
    # A third start finds both ends on disk: nothing is interrupted, nothing retried again.
    third = Retrainer(settings, Runner(), RetrainerMetrics())
    assert third.running is None and third.interrupted is None
