"""Run ``train-and-register`` on Kubeflow Pipelines through its API (the cluster path).

The same pipeline as the embedded run (``pipelines.run``): compiled to KFP IR,
submitted with ``kfp.Client(host=...)``, followed step by step, and its outcome
read back from MLflow, where the ``register`` and ``promote`` steps wrote it.
(The KFP API does not return a run's output parameters, so the submission is
tagged with a ``submission_id`` param that ``register`` logs to the MLflow run.)

Used by the CLI (``sandbox train --kind``, ``sandbox up --kind``) and by the
retrainer in the cluster; it imports nothing from ``sandbox/`` or the services.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from pipelines.params import TrainParams, logged_params
from pipelines.pipeline import PIPELINE_NAME, STEPS
from pipelines.result import TrainResult

# From the host: the KFP UI (NodePort, host port 8080) proxies /apis/v2beta1 to the API server.
DEFAULT_KFP_HOST = "http://127.0.0.1:8080"
# From a pod in the cluster (the retrainer): the API server itself.
IN_CLUSTER_KFP_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
# What the pipeline's pods (namespace kubeflow) use to reach MLflow (Service mlflow, namespace mlops).
IN_CLUSTER_MLFLOW_URI = "http://mlflow.mlops.svc.cluster.local:5000"
IN_CLUSTER_MONITOR_URL = "http://monitor.mlops.svc.cluster.local:8001"

# KFP run / task states (V2beta1RuntimeState) and the words the embedded run uses for them.
FINISHED = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"}
STATE_WORDS = {
    "PENDING": "pending",
    "RUNNING": "running",
    "SUCCEEDED": "success",
    "FAILED": "failure",
    "SKIPPED": "skipped",
    "CANCELING": "canceled",
    "CANCELED": "canceled",
    "PAUSED": "pending",
    "RUNTIME_STATE_UNSPECIFIED": "pending",
}


class RemoteError(RuntimeError):
    """The KFP API or the run failed; the message names the step or says what to do next."""


@dataclass(frozen=True)
class StepProgress:
    """One pipeline step as the KFP API reports it: state in the embedded run's words."""

    step: str
    state: str  # pending | running | success | failure | skipped | canceled
    seconds: float = 0.0
    error: str = ""


# --- pure parts -------------------------------------------------------------------------


def step_progress(task_details: Iterable | None, now: datetime | None = None) -> dict[str, StepProgress]:
    """Turn a run's ``run_details.task_details`` into one ``StepProgress`` per pipeline step.

    The API lists the root DAG and driver/executor entries too, sometimes more than one
    per task (retries); only the six steps are kept, the furthest along of each wins.
    ``now`` (timezone-aware, like the API's times) gives a running step its seconds so far.
    """
    rank = {"pending": 0, "running": 1, "canceled": 2, "skipped": 2, "failure": 3, "success": 4}
    steps: dict[str, StepProgress] = {}
    for task in task_details or []:
        name = task.display_name
        if name not in STEPS:
            continue
        state = STATE_WORDS.get(str(task.state or "").upper(), "pending")
        start, end = _time(task.start_time), _time(task.end_time)
        if start and end and state not in ("pending", "running"):
            seconds = (end - start).total_seconds()
        elif start and now and state == "running":
            seconds = (now - start).total_seconds()
        else:
            seconds = 0.0
        error = (task.error.message or "") if task.error is not None else ""
        progress = StepProgress(name, state, round(max(seconds, 0.0), 2), error)
        if name not in steps or rank[state] >= rank[steps[name].state]:
            steps[name] = progress
    return {name: steps[name] for name in STEPS if name in steps}


def _time(value: datetime | None) -> datetime | None:
    """The API's times, with its way of saying "not yet" (1970-01-01) made None."""
    return value if value is not None and value.year > 1970 else None


def pipeline_parameters(package: dict) -> dict[str, dict]:
    """The compiled pipeline's inputs: ``{name: {"type": ..., "optional": bool, "default": ...}}``."""
    params = package["root"]["inputDefinitions"]["parameters"]
    return {
        name: {
            "type": spec["parameterType"],
            "optional": bool(spec.get("isOptional")),
            "default": spec.get("defaultValue"),
        }
        for name, spec in params.items()
    }


def prepare_arguments(arguments: dict, parameters: dict[str, dict], submission_id: str) -> dict:
    """Check the arguments against the compiled pipeline and make them what the KFP API expects.

    Unknown or missing required parameters fail here (the server's own message is obscure);
    numbers get the declared type; defaults are filled in, so the run records every value;
    ``params_json`` (what the MLflow run logs as params) is made from the arguments as the
    embedded run does, plus ``submission_id``.
    """
    unknown = sorted(set(arguments) - set(parameters))
    if unknown:
        raise RemoteError(f"{PIPELINE_NAME} has no parameter(s) {', '.join(unknown)}")
    missing = sorted(n for n, p in parameters.items() if not p["optional"] and n not in arguments)
    if missing:
        raise RemoteError(f"{PIPELINE_NAME} needs {', '.join(missing)}")
    defaults = {n: p["default"] for n, p in parameters.items() if p["optional"] and n != "params_json"}
    prepared = {}
    for name, value in {**defaults, **arguments}.items():
        kind = parameters[name]["type"]
        if kind in ("NUMBER_INTEGER", "NUMBER_DOUBLE"):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise RemoteError(f"{name} must be a number, got {value!r}") from None
            if kind == "NUMBER_INTEGER" and (isinstance(value, bool) or number != int(number)):
                raise RemoteError(f"{name} must be a whole number, got {value!r}")
            value = int(number) if kind == "NUMBER_INTEGER" else number
        elif kind == "BOOLEAN":
            value = value.strip().lower() in ("1", "true", "yes") if isinstance(value, str) else bool(value)
        elif kind == "STRING":
            value = json.dumps(value) if isinstance(value, dict | list) else str(value)
        prepared[name] = value
    logged = json.loads(prepared.get("params_json") or "{}") or logged_params(prepared)
    prepared["params_json"] = json.dumps({**logged, "submission_id": submission_id}, sort_keys=True)
    return prepared


def for_cluster(params: TrainParams) -> TrainParams:
    """Parameters made on this machine (127.0.0.1 URLs), with the names the pipeline's pods can reach."""
    return replace(
        params,
        mlflow_uri=IN_CLUSTER_MLFLOW_URI,
        monitor_url=IN_CLUSTER_MONITOR_URL if params.monitor_url else "",
    )


def run_summary(run) -> dict:
    """A KFP run (V2beta1Run) as one status row."""
    created, finished = _time(run.created_at), _time(run.finished_at)
    seconds = (finished - created).total_seconds() if created and finished else None
    return {
        "kfp_run_id": run.run_id,
        "name": run.display_name,
        "state": str(run.state or "UNKNOWN").upper(),
        "created_at": created.isoformat() if created else None,
        "seconds": round(seconds, 1) if seconds is not None else None,
        "error": run.error.message if run.error is not None and run.error.message else "",
    }


def failure_message(run, steps: dict[str, StepProgress], url: str) -> str:
    """Name the step that failed and its error, as the embedded run does."""
    failed = next((s for s in steps.values() if s.state in ("failure", "canceled")), None)
    run_error = run.error.message if run.error is not None and run.error.message else ""
    state = str(run.state or "").upper()
    if failed is not None:
        detail = failed.error or run_error or "see the step's logs in the KFP UI"
        return f"step {failed.step!r} {failed.state}: {detail} (run {url})"
    return f"run ended {state}: {run_error or 'see the KFP UI'} (run {url})"


# --- KFP and MLflow ---------------------------------------------------------------------


def compile_package(directory: str | Path) -> tuple[Path, dict]:
    """Compile the pipeline into ``directory``; return the path and the parsed package."""
    import yaml

    from pipelines.run import compile_pipeline

    path = compile_pipeline(Path(directory) / f"{PIPELINE_NAME}.yaml")
    return path, yaml.safe_load(path.read_text())


def connect(host: str, timeout: float = 5.0):
    """A ``kfp.Client`` for ``host``, after a quick health check (the client itself retries for ~25 s)."""
    import warnings

    import httpx

    host = host.rstrip("/")
    try:
        response = httpx.get(f"{host}/apis/v2beta1/healthz", timeout=timeout)
        response.raise_for_status()
        # Through the UI (the host's port 8080) this is the UI's own handler: 200 even while the API
        # server is down, with apiServerReady false (as sandbox.kind_stack.kfp_api_health reads it).
        ready = response.json().get("apiServerReady", True) is not False
    except (httpx.HTTPError, ValueError) as exc:
        raise RemoteError(
            f"the Kubeflow Pipelines API does not answer at {host} ({type(exc).__name__}); "
            "is the cluster up (`sandbox status --kind`, `make up`)? Set SANDBOX_KFP_HOST to point elsewhere"
        ) from exc
    if not ready:
        raise RemoteError(
            f"the KFP UI answers at {host}, its API server does not (apiServerReady: false); "
            "wait for it (`sandbox status --kind`) or see the ml-pipeline pod's log"
        )
    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
        return kfp.Client(host=host)


def find_result(mlflow_client, experiment: str, submission_id: str) -> dict:
    """Read the outcome of the run tagged ``submission_id`` from MLflow: version, metrics, gate decision."""
    from pipelines.registry import current_champion

    exp = mlflow_client.get_experiment_by_name(experiment)
    runs = (
        mlflow_client.search_runs(
            [exp.experiment_id], filter_string=f"params.submission_id = '{submission_id}'", max_results=1
        )
        if exp is not None
        else []
    )
    if not runs:
        raise RemoteError(
            f"the run finished but MLflow has no run with submission_id {submission_id} in experiment "
            f"{experiment!r}; is the pipeline's mlflow_uri the same MLflow this reads?"
        )
    run = runs[0]
    versions = mlflow_client.search_model_versions(f"run_id = '{run.info.run_id}'")
    if not versions:
        raise RemoteError(f"MLflow run {run.info.run_id} registered no model version")
    version = versions[0]
    tags = version.tags or {}
    champion_version = current_champion(mlflow_client, version.name)
    champion = champion_version.version if champion_version else None
    return {
        "run_id": run.info.run_id,
        "model_name": version.name,
        "model_version": str(version.version),
        "metrics": {k: v for k, v in run.data.metrics.items() if not k.startswith("slice_")},
        "promoted": tags.get("gate.decision") == "promoted",
        "outcome": tags.get("gate.decision", "rejected"),
        "reason": tags.get("gate.reason", "no gate decision recorded"),
        "champion_version": str(champion) if champion is not None else None,
    }


def follow(
    client,
    kfp_run_id: str,
    timeout: float,
    on_progress: Callable[[str, str, float], None] | None = None,
    poll_seconds: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    max_errors: int = 5,
):
    """Poll the run until it finishes; ``on_progress(step, state, seconds)`` on every step change.

    Returns ``(run, steps)``; raises ``TimeoutError`` when ``timeout`` seconds pass first, and
    ``RemoteError`` after ``max_errors`` failed polls in a row (a restarting API server is borne).
    """
    deadline = clock() + timeout
    told: dict[str, str] = {}
    errors = 0
    while True:
        try:
            run = client.get_run(kfp_run_id)
        except Exception as exc:  # ApiException, connection errors
            errors += 1
            if errors >= max_errors:
                raise RemoteError(
                    f"lost the KFP API while following run {kfp_run_id} ({errors} failed polls): {_api_error(exc)}"
                ) from exc
            if clock() >= deadline:
                raise TimeoutError(f"run {kfp_run_id} did not finish in {timeout:.0f}s") from exc
            sleep(poll_seconds)
            continue
        errors = 0
        details = run.run_details.task_details if run.run_details is not None else None
        steps = step_progress(details)
        for step in steps.values():
            if step.state != "pending" and told.get(step.step) != step.state:
                told[step.step] = step.state
                if on_progress is not None:
                    on_progress(step.step, step.state, step.seconds)
        if str(run.state or "").upper() in FINISHED:
            return run, steps
        if clock() >= deadline:
            raise TimeoutError(f"run {kfp_run_id} did not finish in {timeout:.0f}s")
        sleep(poll_seconds)


def submit_and_wait(
    host: str,
    arguments: dict,
    timeout: float = 900.0,
    on_progress: Callable[[str, str, float], None] | None = None,
    *,
    results_mlflow_uri: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    poll_seconds: float = 5.0,
    terminate_on_timeout: bool = False,
    on_submitted: Callable[[str, str], None] | None = None,
    client=None,
    mlflow_client=None,
) -> TrainResult:
    """Compile ``train-and-register``, start it on the KFP API at ``host``, follow it, return its outcome.

    ``arguments``: the pipeline's parameters (``mlflow_uri`` required: the MLflow the
    pipeline's pods reach, in a cluster ``IN_CLUSTER_MLFLOW_URI``). ``results_mlflow_uri``:
    where *this* process reads the outcome (default: ``arguments["mlflow_uri"]``; from the
    host, the NodePort, e.g. ``http://127.0.0.1:5000``). The KFP experiment is
    ``experiment`` (default: the ``experiment`` argument, else ``train-and-register``).
    ``on_progress(step, state, seconds)`` as in the embedded run (state: running, success,
    failure, skipped, canceled); ``on_submitted(kfp_run_id, url)`` once KFP has the run.
    Caching is off: every run trains and registers anew. ``client``/``mlflow_client``:
    pass your own (tests, or a client with credentials); by default they are made here.
    Raises ``RemoteError`` (API down, bad arguments, a step failed, timeout).
    """
    submission_id = uuid.uuid4().hex
    experiment = experiment or arguments.get("experiment") or PIPELINE_NAME
    client = client or connect(host)
    with tempfile.TemporaryDirectory(prefix="sandbox-kfp-") as tmp:
        path, package = compile_package(tmp)
        prepared = prepare_arguments(arguments, pipeline_parameters(package), submission_id)
        name = run_name or f"{PIPELINE_NAME} {prepared.get('trigger', 'manual')} {submission_id[:8]}"
        try:
            started = client.create_run_from_pipeline_package(
                str(path),
                arguments=prepared,
                run_name=name,
                experiment_name=experiment,
                enable_caching=False,
            )
        except Exception as exc:  # kfp_server_api.ApiException and connection errors
            raise RemoteError(f"KFP did not accept the run: {_api_error(exc)}") from exc
    kfp_run_id = started.run_id
    url = f"{host.rstrip('/')}/#/runs/details/{kfp_run_id}"
    if on_submitted is not None:
        on_submitted(kfp_run_id, url)
    try:
        run, steps = follow(client, kfp_run_id, timeout, on_progress, poll_seconds)
    except TimeoutError as exc:
        if terminate_on_timeout:
            client.terminate_run(kfp_run_id)
        raise RemoteError(
            f"{exc}; " + ("it was terminated" if terminate_on_timeout else f"it is still running: {url}")
        ) from exc
    state = str(run.state).upper()
    if state != "SUCCEEDED":
        raise RemoteError(failure_message(run, steps, url))
    results_uri = results_mlflow_uri or prepared["mlflow_uri"]
    try:
        if mlflow_client is None:
            from mlflow.tracking import MlflowClient

            mlflow_client = MlflowClient(results_uri)
        outcome = find_result(mlflow_client, prepared.get("experiment", PIPELINE_NAME), submission_id)
    except RemoteError:
        raise
    except Exception as exc:  # MlflowException, connection errors
        raise RemoteError(
            f"run {url} succeeded, but its outcome could not be read from MLflow at {results_uri}: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from exc
    return TrainResult(
        kfp_run_id=kfp_run_id,
        kfp_run_url=url,
        submission_id=submission_id,
        step_seconds={s.step: s.seconds for s in steps.values()},
        **outcome,
    )


def recent_runs(client, limit: int = 5) -> list[dict]:
    """The newest KFP runs, newest first, as status rows."""
    response = client.list_runs(page_size=limit, sort_by="created_at desc")
    return [run_summary(run) for run in response.runs or []]


def _api_error(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            return json.loads(body).get("message") or str(body)[:500]
        except (ValueError, AttributeError):
            return str(body)[:500]
    return f"{type(exc).__name__}: {exc}"[:500]
