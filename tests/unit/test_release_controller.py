"""The release controller's wiring: observe, act, persist, resume after a restart; the retrainer's history.

MLflow and the monitor are small fakes here (a unit test of the wiring's logic); the real ones are in
tests/integration/test_release.py.
"""

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

from pipelines.result import TrainResult
from sandbox.settings import Settings
from services.retrainer.app import Retrainer, RetrainerMetrics
from services.retrainer.release import BAKE, IDLE, SHADOW, ReleaseController


class Version:
    def __init__(self, version):
        self.version = version


class FakeMlflow:
    def __init__(self, aliases):
        self.aliases, self.tags, self.calls = dict(aliases), {}, []

    def get_model_version_by_alias(self, name, alias):
        if alias not in self.aliases:
            raise MlflowException("no alias", error_code=INVALID_PARAMETER_VALUE)
        return Version(self.aliases[alias])

    def set_registered_model_alias(self, name, alias, version):
        self.calls.append(("set", alias, version))
        self.aliases[alias] = version

    def delete_registered_model_alias(self, name, alias):
        self.calls.append(("delete", alias))
        if alias not in self.aliases:
            raise MlflowException("no alias", error_code=RESOURCE_DOES_NOT_EXIST)
        del self.aliases[alias]

    def set_model_version_tag(self, name, version, key, value):
        self.tags.setdefault(version, {})[key] = value

    def get_model_version(self, name, version):
        if version == "99":
            raise MlflowException("no version", error_code=RESOURCE_DOES_NOT_EXIST)
        return Version(version)


class Answer:
    def __init__(self, payload):
        self.payload = payload

    def json(self):
        return self.payload

    def raise_for_status(self):
        pass


class FakeHttp:
    """The monitor's /api/records (paired rows of v1 + v2 in shadow) and Prometheus' /api/v1/query."""

    def __init__(self, rows: int):
        rng = np.random.default_rng(0)
        y = rng.integers(0, 2, rows)
        p = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.2, rows), 0, 1)
        self.records = [
            {"model_version": "1", "label": int(t), "probability": float(q), "prediction": int(q >= 0.5),
             "shadow_version": "2", "shadow_probability": float(q), "shadow_prediction": int(q >= 0.5),
             "features": {"region": "north"}, "ts": 0.0}
            for t, q in zip(y, p, strict=True)
        ]  # fmt: skip
        self.asked = []

    def get(self, url, params=None, timeout=None):
        self.asked.append((url, params))
        if url.endswith("/api/v1/query"):
            return Answer({"data": {"result": [{"value": [0, "0.01"]}]}})
        version = params.get("model_version")
        records = [{**r, "model_version": version} for r in self.records] if version else self.records
        return Answer({"count": len(records), "records": records})


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self):
        return self.now


def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, release_min_paired_rows=200, release_bake_seconds=60,
                    release_bootstrap_resamples=100)  # fmt: skip


def test_a_challenger_goes_through_shadow_and_bake_and_a_restart_resumes_each_phase(tmp_path):
    s, mlflow, http, clock, events = settings(tmp_path), FakeMlflow({"champion": "1", "challenger": "2"}), FakeHttp(300), Clock(), []  # fmt: skip

    def controller():
        return ReleaseController(s, mlflow, http, on_event=events.append, clock=clock)

    assert controller().tick().phase == SHADOW
    shadow = controller()  # a restart in shadow resumes it
    assert shadow.state.phase == SHADOW and shadow.state.challenger == "2"
    clock.now += 10
    assert shadow.tick().phase == BAKE  # 300 paired rows >= 200: the live gate (a tie) promotes
    assert mlflow.aliases == {"champion": "2", "previous": "1"}
    assert mlflow.tags["2"]["gate.live.decision"] == "promoted"
    bake = controller()  # a restart in bake resumes it
    assert bake.state.phase == BAKE and bake.state.previous == "1"
    clock.now += 30
    assert bake.tick().phase == BAKE
    assert http.asked[-3][1]["model_version"] == "2" and http.asked[-3][1]["since"] == 1_010.0
    clock.now += 40
    assert bake.tick().phase == IDLE and bake.state.outcomes[-1]["outcome"] == "done"
    assert [(e["step"], e["outcome"]) for e in events] == [
        ("shadow", "started"), ("live gate", "promoted"), ("bake", "started"), ("done", "done")
    ]  # fmt: skip


def test_pending_actions_are_carried_out_after_a_crash(tmp_path):
    s, mlflow, clock = settings(tmp_path), FakeMlflow({"champion": "1", "challenger": "2"}), Clock()
    first = ReleaseController(s, mlflow, FakeHttp(300), clock=clock)
    first.tick()
    clock.now += 10
    original = first._act
    done = []

    def crash_after_two(action):
        if len(done) == 2:
            raise SystemExit("killed mid-promotion")
        done.append(action)
        original(action)

    first._act = crash_after_two
    with pytest.raises(SystemExit):
        first.tick()
    assert mlflow.aliases.get("champion") == "1"  # the crash came before the alias moved
    again = ReleaseController(s, mlflow, FakeHttp(300), clock=clock)
    assert again.state.phase == BAKE and again.state.pending
    again.tick()
    assert mlflow.aliases == {"champion": "2", "previous": "1"} and again.state.pending == []


def test_a_rollback_by_hand_checks_the_target_and_ends_the_phase(tmp_path):
    s, mlflow = settings(tmp_path), FakeMlflow({"champion": "2", "previous": "1"})
    controller = ReleaseController(s, mlflow, FakeHttp(10), clock=Clock())

    def refuse(version):
        raise ValueError(f"v{version} does not load")

    cases = [
        (None, refuse, "does not load"),
        ("2", refuse, "already the champion"),
        ("99", refuse, "no version 99"),
    ]
    for to, check, message in cases:
        try:
            controller.rollback(to, check)
        except ValueError as exc:
            assert message in str(exc)
        else:
            raise AssertionError("a rollback that should be refused was not")
    assert mlflow.aliases["champion"] == "2"
    answer = controller.rollback(None, lambda version: None)
    assert answer == {"champion": "1", "was": "2", "reason": "rolled back by hand from v2 to v1"}
    assert mlflow.aliases == {"champion": "1", "previous": "2"} and "rolled_back" in mlflow.tags["2"]


def test_the_retrainer_history_shows_the_whole_path_and_keeps_it_after_a_restart(tmp_path):
    class Runner:
        def run(self, params, on_step=None, log_name=None):
            return TrainResult(
                "run", "m", "2", {}, False, "passes; challenger goes into shadow", "1", outcome="shadow"
            )

    s = Settings(home=tmp_path)
    retrainer = Retrainer(s, Runner(), RetrainerMetrics())
    alert = {"status": "firing", "labels": {"alertname": "DataDriftDetected", "action": "retrain"},
             "annotations": {}, "startsAt": "2026-12-01T09:00:00Z", "fingerprint": "f"}  # fmt: skip
    retrainer.handle({"version": "4", "status": "firing", "alerts": [alert]})
    retrainer.wait_idle(10)
    assert retrainer.status()["last"]["state"] == "shadow"
    for step, outcome in [
        ("shadow", "started"),
        ("live gate", "promoted"),
        ("bake", "started"),
        ("done", "done"),
    ]:
        retrainer.release_event({"version": "2", "step": step, "outcome": outcome, "reason": "r", "at": 1.0})
    last = retrainer.status()["last"]
    assert last["state"] == "promoted"
    assert [p["step"] for p in last["path"]] == ["offline gate", "shadow", "live gate", "bake", "done"]
    again = Retrainer(s, Runner(), RetrainerMetrics()).status()
    assert again["last"]["path"] == last["path"] and len(again["history"]) == 1
    retrainer.release_event(
        {"version": "2", "step": "rolled back", "outcome": "rolled_back", "reason": "r", "at": 2.0}
    )
    assert retrainer.status()["last"]["state"] == "rolled_back"
    assert retrainer.metrics.rollbacks._value.get() == 1


def test_the_release_controller_polls_only_while_the_server_runs(tmp_path):
    """Building the app (as the OpenAPI checks do) starts no thread; the server's lifespan starts and stops it."""
    from fastapi.testclient import TestClient

    from services.retrainer.app import create_app

    nothing_listens = "http://127.0.0.1:9"
    app = create_app(Settings(home=tmp_path, mlflow_tracking_uri=nothing_listens), runner=None)
    controller = app.state.retrainer.release
    assert controller._thread is None
    with TestClient(app):
        assert controller._thread.is_alive()
    controller._thread.join(timeout=10)
    assert not controller._thread.is_alive() and controller.died is None
