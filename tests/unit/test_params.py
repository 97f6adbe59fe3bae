"""One list of pipeline parameters, one set of defaults: the pipeline, the CLI and both runs agree."""

import inspect
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from pipelines.params import TrainParams, logged_params
from pipelines.result import TrainResult
from pipelines.runners import EmbeddedRunner, KfpRunner, runner_for
from sandbox.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def compiled_parameters(tmp_path) -> dict:
    import yaml

    from pipelines.run import compile_pipeline

    package = yaml.safe_load(compile_pipeline(tmp_path / "p.yaml").read_text())
    return package["root"]["inputDefinitions"]["parameters"]


def test_the_compiled_pipeline_declares_exactly_train_params_with_their_defaults(tmp_path):
    declared = compiled_parameters(tmp_path)
    assert set(declared) == {f.name for f in fields(TrainParams)} | {"params_json"}
    for f in fields(TrainParams):
        if f.name == "mlflow_uri":
            assert "defaultValue" not in declared[f.name], "mlflow_uri has no default: a run must say where"
        else:
            assert declared[f.name]["defaultValue"] == f.default, f.name


def test_defaults_that_are_settings_come_from_settings():
    defaults, settings = TrainParams(mlflow_uri="u"), Settings()
    assert (defaults.model_name, defaults.gate_metric, defaults.min_score, defaults.tolerance) == (
        settings.model_name, settings.gate_metric, settings.gate_min_score, settings.gate_tolerance,
    )  # fmt: skip
    assert defaults.clean_rows == settings.retrain_clean_rows == 20_000
    assert defaults.drift_reference_rows == settings.retrain_drift_reference_rows


def test_the_cli_train_options_default_to_the_pipelines():
    from sandbox.cli import train

    options = inspect.signature(train).parameters
    defaults = TrainParams(mlflow_uri="")
    shared = [name for name in options if name in {f.name for f in fields(TrainParams)}]
    assert len(shared) >= 8
    for name in shared:
        if name != "csv_path":
            assert options[name].default == getattr(defaults, name), name


def test_the_cli_and_the_retrainer_build_their_params_from_the_same_settings(tmp_path):
    from sandbox.training import train_params
    from services.retrainer.app import retrain_params

    settings = Settings(home=tmp_path, retrain_clean_rows=123, gate_tolerance=0.05, model_name="m")
    alert = {"labels": {"alertname": "DataDriftDetected"}, "startsAt": "2026-12-01T10:00:00Z"}
    by_cli, by_retrainer = train_params(settings), retrain_params(settings, alert, seed=3)
    for params in (by_cli, by_retrainer):
        assert (params.clean_rows, params.tolerance, params.model_name) == (123, 0.05, "m")
        assert params.mlflow_uri == settings.mlflow_uri and params.monitor_url == settings.monitor_url
    assert by_retrainer.source == "production" and by_retrainer.drift_reference_since > 0
    assert json.loads(by_retrainer.trigger_info)["alertname"] == "DataDriftDetected"


def test_params_json_logs_what_the_run_was_asked_and_hides_where():
    arguments = TrainParams(mlflow_uri="http://secret-host", n_rows=7).arguments()
    logged = json.loads(arguments["params_json"])
    assert logged == logged_params(arguments) and logged["n_rows"] == 7
    assert "mlflow_uri" not in logged and "trigger_info" not in logged


def test_the_runner_is_chosen_once_from_settings(tmp_path):
    assert isinstance(runner_for(Settings(home=tmp_path)), EmbeddedRunner)
    kfp = runner_for(Settings(home=tmp_path, kfp_host="http://kfp:8888"), from_host=True)
    assert isinstance(kfp, KfpRunner) and kfp.host == "http://kfp:8888"
    assert kfp.results_mlflow_uri == Settings().mlflow_uri  # the host reads the outcome at its port


def test_train_result_round_trips_and_ignores_unknown_keys():
    result = TrainResult("r", "m", "2", {"roc_auc": 0.8}, True, "ok", "2")
    assert TrainResult.from_dict({**result.to_dict(), "new_field": 1}) == result


@pytest.mark.parametrize("benchmark", sorted(p.name for p in (REPO / "benchmarks").glob("*.py")))
def test_every_benchmark_imports_and_explains_itself(benchmark):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / benchmark), "--help"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0 and "usage" in done.stdout.lower(), done.stderr[-2000:]
