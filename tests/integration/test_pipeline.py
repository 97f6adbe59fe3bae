"""train-and-register through kfp.local against a real MLflow server."""

import json

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines.features import LOAN_SCHEMA
from pipelines.registry import REFERENCE_ARTIFACT
from pipelines.run import PipelineError
from sandbox.settings import Settings
from sandbox.training import train, train_params

pytestmark = pytest.mark.integration
MODEL = "it-loan-default"


@pytest.fixture(scope="module")
def settings(mlflow_server, tmp_path_factory):
    return Settings(home=tmp_path_factory.mktemp("home"), mlflow_tracking_uri=mlflow_server)


@pytest.fixture(scope="module")
def first_run(settings):
    steps = []
    result = train(
        train_params(settings, n_rows=6_000, seed=1, model_name=MODEL),
        settings,
        lambda *event: steps.append(event),
    )
    return result, steps


def test_first_model_becomes_champion(first_run, settings):
    result, steps = first_run
    assert result.promoted is True and result.model_version == "1"
    assert result.champion_version == "1"
    assert "no champion yet" in result.reason
    finished = [(step, state) for step, state, _ in steps if state != "running"]
    assert finished == [
        (s, "success") for s in ("load-data", "validate-data", "train", "evaluate", "register", "promote")
    ]

    client = MlflowClient(settings.mlflow_uri)
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    assert client.get_model_version_by_alias(MODEL, "challenger").version == "1"
    run = client.get_run(result.run_id)
    assert run.data.params["max_iter"] == "200" and run.data.params["scenario"] == "none"
    assert run.data.metrics["roc_auc"] == pytest.approx(result.metrics["roc_auc"])
    assert "slice_region_north_roc_auc" in run.data.metrics
    # The metrics are tied to the logged model too (logged after it, in one request).
    logged = client.get_logged_model(run.outputs.model_outputs[0].model_id)
    assert {m.key for m in logged.metrics} >= {"roc_auc", "slice_region_north_roc_auc"}
    assert run.data.tags["trigger"] == "manual"
    version = client.get_model_version(MODEL, "1")
    assert version.tags["gate.decision"] == "promoted"


def test_registered_model_has_signature_example_and_reference(first_run, settings):
    import mlflow

    result, _ = first_run
    mlflow.set_tracking_uri(settings.mlflow_uri)
    info = mlflow.models.get_model_info(f"models:/{MODEL}@champion")
    assert info.signature is not None
    assert [i.name for i in info.signature.inputs.inputs] == LOAN_SCHEMA.names
    assert info.saved_input_example_info is not None
    path = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path=REFERENCE_ARTIFACT)
    reference = pd.read_parquet(path)
    assert list(reference.columns) == LOAN_SCHEMA.names + ["default"] and len(reference) > 1000


def test_worse_challenger_is_not_promoted_and_the_tag_says_why(first_run, settings):
    weak = train_params(settings, n_rows=6_000, seed=1, model_name=MODEL, max_iter=3, max_depth=2)
    result = train(weak, settings)
    assert result.promoted is False and result.model_version == "2"
    assert result.champion_version == "1"
    client = MlflowClient(settings.mlflow_uri)
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    assert client.get_model_version_by_alias(MODEL, "challenger").version == "2"
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["gate.decision"] == "rejected"
    assert "worse than the champion" in tags["gate.reason"]
    details = json.loads(tags["gate.details"])
    assert details["champion_score"] > details["challenger_score"] + details["tolerance"]


def test_a_failing_step_is_named(settings, tmp_path):
    # The file passes the pre-check, but 30 sampled rows are too few: validate-data fails and says why.
    from pipelines.data import generate_loans

    path = tmp_path / "loans.csv"
    generate_loans(300, seed=0).to_csv(path, index=False)
    params = train_params(settings, source="csv", csv_path=str(path), n_rows=30, model_name=MODEL)
    with pytest.raises(PipelineError, match=r"step 'validate-data' failed: .*only 30 rows; at least 50"):
        train(params, settings)
