"""The KFP remote path without a KFP server: the pure parts, the compiled package and arguments as
the API would receive them, following a run through API model objects, and the outcome read back
from a real MLflow store (SQLite, in process)."""

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kfp_server_api import (
    GoogleRpcStatus,
    V2beta1ListRunsResponse,
    V2beta1PipelineTaskDetail,
    V2beta1Run,
    V2beta1RunDetails,
)

from pipelines import remote
from pipelines.params import TrainParams
from pipelines.pipeline import STEPS
from pipelines.result import TrainResult
from tests.support.processes import free_port

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def task(name, state, start=None, seconds=None, error=None):
    return V2beta1PipelineTaskDetail(
        display_name=name,
        state=state,
        start_time=T0 + timedelta(seconds=start) if start is not None else None,
        end_time=T0 + timedelta(seconds=start + seconds) if seconds is not None else None,
        error=GoogleRpcStatus(code=2, message=error) if error else None,
    )


def run(state, tasks=(), error=None, run_id="kfp-run-1"):
    return V2beta1Run(
        run_id=run_id,
        display_name="train-and-register manual abc",
        state=state,
        created_at=T0,
        finished_at=T0 + timedelta(seconds=95) if state in remote.FINISHED else None,
        error=GoogleRpcStatus(code=2, message=error) if error else None,
        run_details=V2beta1RunDetails(task_details=list(tasks)),
    )


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return remote.compile_package(tmp_path_factory.mktemp("ir"))


# --- pure parts -------------------------------------------------------------------------


def test_step_progress_keeps_the_six_steps_in_order_in_the_embedded_runs_words():
    details = [
        task("train-and-register-xyz", "RUNNING", 0),  # the root DAG
        task("executor", "RUNNING", 0),
        task("validate-data", "SUCCEEDED", 12, 6.5),
        task("load-data", "SUCCEEDED", 1, 10.25),
        task("train", "RUNNING", 20),
        task("evaluate", "PENDING"),
    ]
    steps = remote.step_progress(details, now=T0 + timedelta(seconds=50))
    assert list(steps) == ["load-data", "validate-data", "train", "evaluate"]
    assert steps["load-data"] == remote.StepProgress("load-data", "success", 10.25)
    assert steps["validate-data"].seconds == 6.5
    assert steps["train"] == remote.StepProgress("train", "running", 30.0)
    assert steps["evaluate"].state == "pending"


def test_step_progress_the_furthest_attempt_of_a_step_wins_and_errors_are_kept():
    details = [
        task("train", "FAILED", 0, 3, error="MemoryError: out of memory"),
        task("train", "RUNNING", 5),  # a retry, later in the list
        task("register", "FAILED", 10, 2, error="ConnectionError: MLflow not reachable"),
        task("register", "PENDING"),
    ]
    steps = remote.step_progress(details)
    assert steps["train"].state == "failure" and steps["train"].error == "MemoryError: out of memory"
    assert steps["register"] == remote.StepProgress(
        "register", "failure", 2.0, "ConnectionError: MLflow not reachable"
    )
    # The API says "not yet" with 1970-01-01: a pending step's time is not 55 years.
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    waiting = V2beta1PipelineTaskDetail(
        display_name="train", state="RUNNING", start_time=epoch, end_time=epoch
    )
    assert remote.step_progress([waiting], now=T0)["train"].seconds == 0.0
    assert remote.step_progress(None) == {} and remote.step_progress([task("promote", None)])[
        "promote"
    ].state == ("pending")


def test_failure_message_names_the_step_and_its_error_and_the_run():
    failed = run(
        "FAILED", [task("load-data", "SUCCEEDED", 0, 1), task("train", "FAILED", 1, 2, "ValueError: bad")]
    )
    steps = remote.step_progress(failed.run_details.task_details)
    assert remote.failure_message(failed, steps, "http://kfp/#/runs/details/r") == (
        "step 'train' failure: ValueError: bad (run http://kfp/#/runs/details/r)"
    )
    no_steps = run("FAILED", error="pod was evicted")
    assert "run ended FAILED: pod was evicted" in remote.failure_message(no_steps, {}, "u")


def test_run_summary_and_recent_runs():
    class Client:
        def list_runs(self, page_size, sort_by):
            self.asked = (page_size, sort_by)
            return V2beta1ListRunsResponse(runs=[run("SUCCEEDED"), run("RUNNING", run_id="kfp-run-2")])

    client = Client()
    rows = remote.recent_runs(client, limit=3)
    assert client.asked == (3, "created_at desc")
    assert rows[0] == {
        "kfp_run_id": "kfp-run-1",
        "name": "train-and-register manual abc",
        "state": "SUCCEEDED",
        "created_at": "2025-01-01T12:00:00+00:00",
        "seconds": 95.0,
        "error": "",
    }
    assert rows[1]["state"] == "RUNNING" and rows[1]["seconds"] is None
    unfinished = run("RUNNING")
    unfinished.finished_at = datetime(1970, 1, 1, tzinfo=UTC)
    assert remote.run_summary(unfinished)["seconds"] is None


# --- the compiled package and the arguments the API receives ------------------------------


def test_the_package_is_valid_ir_with_the_six_steps_in_the_project_image(package):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    from pipelines.components import PROJECT_IMAGE

    path, document = package
    assert path.name == "train-and-register.yaml" and path.is_file()
    spec = json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec())
    assert set(spec.root.dag.tasks) == set(STEPS)
    assert {e["container"]["image"] for e in document["deploymentSpec"]["executors"].values()} == {
        PROJECT_IMAGE
    }
    params = remote.pipeline_parameters(document)
    assert params["mlflow_uri"] == {"type": "STRING", "optional": False, "default": None}
    assert params["n_rows"]["type"] == "NUMBER_INTEGER" and params["severity"]["type"] == "NUMBER_DOUBLE"


def test_prepare_arguments_types_defaults_and_the_submission_id(package):
    params = remote.pipeline_parameters(package[1])
    prepared = remote.prepare_arguments(
        {"mlflow_uri": remote.IN_CLUSTER_MLFLOW_URI, "n_rows": 5000.0, "severity": 2, "seed": "3"},
        params,
        "sub-1",
    )
    assert prepared["n_rows"] == 5000 and type(prepared["n_rows"]) is int
    assert prepared["severity"] == 2.0 and type(prepared["severity"]) is float
    assert prepared["seed"] == 3
    # Every parameter has a value: the run in the KFP UI shows what it was asked to do.
    assert set(prepared) == set(params)
    assert prepared["model_name"] == "loan-default" and prepared["max_iter"] == 200
    logged = json.loads(prepared["params_json"])
    assert logged["submission_id"] == "sub-1" and logged["n_rows"] == 5000
    assert "mlflow_uri" not in logged and "params_json" not in logged


def test_prepare_arguments_refuses_what_the_server_would_refuse_obscurely(package):
    params = remote.pipeline_parameters(package[1])
    with pytest.raises(remote.RemoteError, match="has no parameter.*n_row"):
        remote.prepare_arguments({"mlflow_uri": "u", "n_row": 10}, params, "s")
    with pytest.raises(remote.RemoteError, match="needs mlflow_uri"):
        remote.prepare_arguments({"n_rows": 10}, params, "s")
    with pytest.raises(remote.RemoteError, match="n_rows must be a whole number"):
        remote.prepare_arguments({"mlflow_uri": "u", "n_rows": 10.5}, params, "s")
    with pytest.raises(remote.RemoteError, match="severity must be a number, got 'high'"):
        remote.prepare_arguments({"mlflow_uri": "u", "severity": "high"}, params, "s")


def test_the_clis_arguments_fit_the_pipeline_once_pointed_at_the_cluster(package):
    from sandbox.settings import Settings
    from sandbox.training import train_params

    arguments = remote.for_cluster(train_params(Settings(), n_rows=1000, seed=4)).arguments()
    assert arguments["mlflow_uri"] == "http://mlflow.mlops.svc.cluster.local:5000"
    assert arguments["monitor_url"] == "http://monitor.mlops.svc.cluster.local:8001"
    prepared = remote.prepare_arguments(arguments, remote.pipeline_parameters(package[1]), "s")
    assert prepared["n_rows"] == 1000 and prepared["seed"] == 4
    assert "127.0.0.1" not in json.dumps(prepared), "a pod cannot reach this machine's loopback"


# --- following a run ------------------------------------------------------------------------


class FakeKfp:
    """What the KFP client does, as far as ``submit_and_wait`` can tell: a run that moves on per poll."""

    def __init__(self, runs, on_create=None):
        self.runs, self.on_create = list(runs), on_create
        self.created, self.terminated, self.polls = [], [], 0

    def create_run_from_pipeline_package(
        self, pipeline_file, arguments, run_name, experiment_name, enable_caching
    ):
        import yaml

        package = yaml.safe_load(Path(pipeline_file).read_text())  # must exist while the client reads it
        self.created.append(
            dict(
                package=package,
                arguments=arguments,
                run_name=run_name,
                experiment=experiment_name,
                caching=enable_caching,
            )
        )
        if self.on_create:
            self.on_create(arguments)

        class Started:
            run_id = "kfp-run-1"

        return Started()

    def get_run(self, run_id):
        assert run_id == "kfp-run-1"
        self.polls += 1
        return self.runs.pop(0) if len(self.runs) > 1 else self.runs[0]

    def terminate_run(self, run_id):
        self.terminated.append(run_id)


RUN_SEQUENCE = [
    run("PENDING"),
    run("RUNNING", [task("load-data", "RUNNING", 0)]),
    run("RUNNING", [task("load-data", "SUCCEEDED", 0, 4), task("validate-data", "RUNNING", 4)]),
    run("RUNNING", [task("load-data", "SUCCEEDED", 0, 4), task("validate-data", "RUNNING", 4)]),  # no change
    run("SUCCEEDED", [task(step, "SUCCEEDED", i * 10, 9) for i, step in enumerate(STEPS)]),
]


def test_follow_reports_each_step_change_once_and_returns_the_finished_run():
    client = FakeKfp(RUN_SEQUENCE)
    seen = []
    finished, steps = remote.follow(
        client, "kfp-run-1", 60, lambda *event: seen.append(event), poll_seconds=0, sleep=lambda s: None
    )
    assert finished.state == "SUCCEEDED" and client.polls == 5
    assert seen[:3] == [
        ("load-data", "running", 0.0),
        ("load-data", "success", 4.0),
        ("validate-data", "running", 0.0),
    ]
    assert seen[3:] == [("validate-data", "success", 9.0), *[(s, "success", 9.0) for s in STEPS[2:]]]
    assert list(steps) == list(STEPS)


def test_follow_gives_up_at_the_timeout():
    now = [0.0]
    client = FakeKfp([run("RUNNING")])

    def sleep(seconds):
        now[0] += seconds

    with pytest.raises(TimeoutError, match="did not finish in 30s"):
        remote.follow(client, "kfp-run-1", 30, poll_seconds=5, clock=lambda: now[0], sleep=sleep)
    assert client.polls == 7  # at 0, 5, ..., 30 s


def test_follow_bears_a_few_failed_polls_but_not_many():
    class Flaky(FakeKfp):
        def __init__(self, runs, failures):
            super().__init__(runs)
            self.failures = failures

        def get_run(self, run_id):
            if self.failures:
                self.failures -= 1
                raise ConnectionResetError("connection reset by peer")
            return super().get_run(run_id)

    finished, _ = remote.follow(
        Flaky([run("SUCCEEDED")], 4), "kfp-run-1", 60, poll_seconds=0, sleep=lambda s: None
    )
    assert finished.state == "SUCCEEDED"
    with pytest.raises(remote.RemoteError, match="lost the KFP API.*5 failed polls.*connection reset"):
        remote.follow(Flaky([run("SUCCEEDED")], 5), "kfp-run-1", 60, poll_seconds=0, sleep=lambda s: None)


def test_prepare_arguments_turns_structured_strings_into_json(package):
    params = remote.pipeline_parameters(package[1])
    prepared = remote.prepare_arguments(
        {"mlflow_uri": "u", "trigger_info": {"alert": "DataDriftDetected"}}, params, "s"
    )
    assert json.loads(prepared["trigger_info"]) == {"alert": "DataDriftDetected"}


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A real MLflow tracking + registry store (SQLite, in process): what the pipeline's steps write to."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}"), root


def pipeline_writes(mlflow_store, promoted=True, model_name="loan-default"):
    """What register + promote leave in MLflow for one submission (params_json -> params, gate tags)."""
    client, root = mlflow_store

    def write(arguments):
        exp = client.get_experiment_by_name(arguments["experiment"])
        exp_id = exp.experiment_id if exp else client.create_experiment(arguments["experiment"])
        mlflow_run = client.create_run(exp_id)
        for key, value in json.loads(arguments["params_json"]).items():
            client.log_param(mlflow_run.info.run_id, key, value)
        client.log_metric(mlflow_run.info.run_id, "roc_auc", 0.83)
        client.log_metric(mlflow_run.info.run_id, "slice_region_north_roc_auc", 0.8)
        if not client.search_registered_models(f"name = '{model_name}'"):
            client.create_registered_model(model_name)
        version = client.create_model_version(model_name, str(root / "model"), run_id=mlflow_run.info.run_id)
        client.set_model_version_tag(
            model_name, version.version, "gate.decision", "promoted" if promoted else "rejected"
        )
        client.set_model_version_tag(
            model_name, version.version, "gate.reason", "no champion yet; roc_auc 0.83"
        )
        if promoted:
            client.set_registered_model_alias(model_name, "champion", version.version)

    return write


def test_submit_and_wait_submits_the_package_follows_it_and_reads_the_outcome_from_mlflow(mlflow_store):
    client = FakeKfp(RUN_SEQUENCE, on_create=pipeline_writes(mlflow_store))
    seen, submitted = [], []
    result = remote.submit_and_wait(
        "http://kfp.example:8080/",
        remote.for_cluster(
            TrainParams(mlflow_uri="http://127.0.0.1:5000", n_rows=2000, trigger="alert")
        ).arguments(),
        timeout=60,
        on_progress=lambda *event: seen.append(event),
        on_submitted=lambda *run: submitted.append((*run, client.polls)),
        poll_seconds=0,
        client=client,
        mlflow_client=mlflow_store[0],
    )
    # Told before the first poll, so the caller can show where to watch the run.
    assert submitted == [("kfp-run-1", "http://kfp.example:8080/#/runs/details/kfp-run-1", 0)]
    created = client.created[0]
    assert created["experiment"] == "train-and-register" and created["caching"] is False
    assert created["package"]["pipelineInfo"]["name"] == "train-and-register"
    assert created["arguments"]["mlflow_uri"] == remote.IN_CLUSTER_MLFLOW_URI
    assert created["run_name"] == f"train-and-register alert {result.submission_id[:8]}"
    assert isinstance(result, TrainResult) and result.kfp_run_id == "kfp-run-1"
    assert result.kfp_run_url == "http://kfp.example:8080/#/runs/details/kfp-run-1"
    assert (result.model_name, result.model_version, result.promoted, result.champion_version) == (
        "loan-default",
        "1",
        True,
        "1",
    )
    assert result.metrics == {"roc_auc": 0.83}, "per-slice metrics stay out, as in the embedded result"
    assert result.reason == "no champion yet; roc_auc 0.83"
    assert result.step_seconds == {step: 9.0 for step in STEPS}
    assert ("promote", "success", 9.0) in seen
    assert result.log is None, "a KFP run's log is in KFP, not on this machine"

    # A second, rejected run: its own version, found by its own submission id; the champion stays.
    client = FakeKfp(RUN_SEQUENCE, on_create=pipeline_writes(mlflow_store, promoted=False))
    second = remote.submit_and_wait(
        "http://kfp", {"mlflow_uri": "u"}, poll_seconds=0, client=client, mlflow_client=mlflow_store[0]
    )
    assert (second.model_version, second.promoted, second.champion_version) == ("2", False, "1")
    assert second.submission_id != result.submission_id


def test_a_failed_run_raises_naming_the_step(mlflow_store):
    failed = run(
        "FAILED", [task("load-data", "SUCCEEDED", 0, 3), task("train", "FAILED", 3, 1, "KeyError: 'age'")]
    )
    client = FakeKfp([run("RUNNING"), failed])
    with pytest.raises(remote.RemoteError) as info:
        remote.submit_and_wait(
            "http://kfp:8080",
            {"mlflow_uri": "u"},
            poll_seconds=0,
            client=client,
            mlflow_client=mlflow_store[0],
        )
    assert (
        str(info.value)
        == "step 'train' failure: KeyError: 'age' (run http://kfp:8080/#/runs/details/kfp-run-1)"
    )


def test_a_run_over_time_is_left_running_or_terminated_on_request(mlflow_store, monkeypatch):
    monkeypatch.setattr(remote.time, "sleep", lambda s: None)
    client = FakeKfp([run("RUNNING")])
    with pytest.raises(remote.RemoteError, match="it is still running: http://kfp/#/runs/details/kfp-run-1"):
        remote.submit_and_wait("http://kfp", {"mlflow_uri": "u"}, timeout=0, client=client)
    assert client.terminated == []
    with pytest.raises(remote.RemoteError, match="it was terminated"):
        remote.submit_and_wait(
            "http://kfp", {"mlflow_uri": "u"}, timeout=0, client=client, terminate_on_timeout=True
        )
    assert client.terminated == ["kfp-run-1"]


def test_a_finished_run_mlflow_does_not_know_says_so(mlflow_store):
    client = FakeKfp(RUN_SEQUENCE)  # nothing written to MLflow: the pipeline used another MLflow
    with pytest.raises(remote.RemoteError, match="MLflow has no run with submission_id"):
        remote.submit_and_wait(
            "http://kfp", {"mlflow_uri": "u"}, poll_seconds=0, client=client, mlflow_client=mlflow_store[0]
        )


def test_an_unreachable_kfp_api_is_a_clear_error_within_seconds():
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(remote.RemoteError) as info:
        remote.connect(f"http://127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - started < 10
    assert f"does not answer at http://127.0.0.1:{port}" in str(info.value)
    assert "make up" in str(info.value) and "SANDBOX_KFP_HOST" in str(info.value)


def test_sandbox_train_kind_refuses_a_local_csv_and_an_unreachable_cluster(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sandbox.cli import app

    port = free_port()  # nothing listens there
    monkeypatch.setenv("SANDBOX_MLFLOW_PORT", str(port))
    monkeypatch.setenv("SANDBOX_KFP_HOST", f"http://127.0.0.1:{port}")
    csv = CliRunner().invoke(
        app, ["train", "--kind", "--source", "csv", "--csv-path", str(tmp_path / "x.csv")]
    )
    assert csv.exit_code == 1 and "cluster's pods cannot see" in " ".join(csv.output.split())
    down = CliRunner().invoke(app, ["train", "--kind", "--n-rows", "500"])
    text = " ".join(down.output.split())
    assert down.exit_code == 1 and f"MLflow is not reachable at http://127.0.0.1:{port}" in text
    assert "make up" in text and "Traceback" not in down.output
    bad = CliRunner().invoke(app, ["train", "--kind", "--n-rows", "0"])
    assert bad.exit_code == 1 and "--n-rows must be positive" in " ".join(bad.output.split())
