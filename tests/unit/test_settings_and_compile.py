import subprocess
import sys

import yaml

from pipelines.components import PROJECT_IMAGE
from pipelines.run import compile_pipeline
from sandbox.local_stack import programs, render_config
from sandbox.settings import Settings


def test_settings_read_the_environment_and_touch_nothing(tmp_path, monkeypatch):
    home = tmp_path / "state"
    monkeypatch.setenv("SANDBOX_HOME", str(home))
    monkeypatch.setenv("SANDBOX_MLFLOW_PORT", "5999")
    monkeypatch.setenv("SANDBOX_GATE_TOLERANCE", "0.05")
    settings = Settings()
    assert settings.home == home and settings.mlflow_uri == "http://127.0.0.1:5999"
    assert settings.gate_tolerance == 0.05
    assert not home.exists(), "settings must not create anything"


def test_importing_settings_does_not_import_the_cli_or_mlflow():
    code = "import sys, sandbox.settings; print(any(m in sys.modules for m in ('sandbox.cli', 'mlflow', 'typer')))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    )


def test_supervisor_config_runs_every_program_under_the_state_dir(tmp_path):
    settings = Settings(home=tmp_path, mlflow_port=5123, serving_port=3123)
    config = render_config(settings, programs(settings))
    assert "[program:mlflow]" in config and "[program:serving]" in config
    assert "--port 5123" in config and "--port 3123" in config
    assert f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}" in config
    assert "stopasgroup=true" in config and "killasgroup=true" in config


def test_compiled_pipeline_parses_back_and_names_the_project_image(tmp_path):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    path = compile_pipeline(tmp_path / "pipeline.yaml")
    document = yaml.safe_load(path.read_text())
    spec = json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec())
    assert spec.pipeline_info.name == "train-and-register"
    tasks = spec.root.dag.tasks
    assert set(tasks) == {"load-data", "validate-data", "train", "evaluate", "register", "promote"}
    images = {executor["container"]["image"] for executor in document["deploymentSpec"]["executors"].values()}
    assert images == {PROJECT_IMAGE}
    assert "mlflow_uri" in spec.root.input_definitions.parameters


def test_compile_to_an_unwritable_path_names_the_fix(tmp_path):
    from typer.testing import CliRunner

    from sandbox.cli import app

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(app, ["compile", "--output", str(blocker / "x.yaml")])
    assert result.exit_code == 1
    assert "pass --output a path in a writable directory" in result.output
