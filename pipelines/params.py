"""What a ``train-and-register`` run takes (:class:`TrainParams`) and gives back (:class:`TrainResult`,
defined in ``pipelines.result`` so the KFP steps need not import the settings).

One list of parameters, one set of defaults: the pipeline's signature (what KFP compiles and its UI
shows), the CLI's defaults, the retrainer's run and both runners derive from ``TrainParams``.
Defaults that are also settings (model name, gate, the production mix) are read from ``Settings``.
"""

# No `from __future__ import annotations`: the pipeline signature hands these annotations to KFP.
import inspect
import json
import typing
from dataclasses import MISSING, asdict, dataclass, fields

from pipelines.hyperparams import DEFAULT_HYPERPARAMS, HYPERPARAMS
from sandbox.settings import Settings


def _setting(name: str):
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class TrainParams:
    mlflow_uri: str
    model_name: str = _setting("model_name")
    experiment: str = _setting("experiment")
    # The data: a source (synthetic | breast_cancer | csv | production) and a drift scenario on it.
    source: str = "synthetic"
    scenario: str = "none"
    severity: float = 1.0
    n_rows: int = 20000
    seed: int = 0
    csv_path: str = ""
    # The estimator's hyperparameters (defaults: pipelines/hyperparams.py).
    learning_rate: float = DEFAULT_HYPERPARAMS["learning_rate"]
    max_iter: int = DEFAULT_HYPERPARAMS["max_iter"]
    max_depth: int = DEFAULT_HYPERPARAMS["max_depth"]
    min_samples_leaf: int = DEFAULT_HYPERPARAMS["min_samples_leaf"]
    # The offline gate (pipelines/gate.py).
    gate_metric: str = _setting("gate_metric")
    min_score: float = _setting("gate_min_score")
    tolerance: float = _setting("gate_tolerance")
    slice_tolerance: float = _setting("gate_slice_tolerance")
    # Why the run happens, tagged on the MLflow run (trigger_info: JSON, each key as trigger.<key>).
    trigger: str = "manual"
    trigger_info: str = "{}"
    # source=production: the monitor's records by the mix rule of pipelines/production.py.
    monitor_url: str = ""
    clean_rows: int = _setting("retrain_clean_rows")
    min_production_rows: int = _setting("retrain_min_production_rows")
    drift_reference_rows: int = _setting("retrain_drift_reference_rows")
    drift_reference_since: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> "TrainParams":
        """The parameters this platform's settings say, with ``overrides`` on top."""
        return cls(
            **{
                "mlflow_uri": settings.mlflow_uri,
                "model_name": settings.model_name,
                "experiment": settings.experiment,
                "gate_metric": settings.gate_metric,
                "min_score": settings.gate_min_score,
                "tolerance": settings.gate_tolerance,
                "slice_tolerance": settings.gate_slice_tolerance,
                "monitor_url": settings.monitor_url,
                "clean_rows": settings.retrain_clean_rows,
                "min_production_rows": settings.retrain_min_production_rows,
                "drift_reference_rows": settings.retrain_drift_reference_rows,
                **overrides,
            }
        )

    @property
    def hyperparams(self) -> dict:
        return {name: getattr(self, name) for name in HYPERPARAMS}

    def arguments(self) -> dict:
        """The pipeline's arguments: every parameter, plus ``params_json`` (what MLflow logs)."""
        arguments = asdict(self)
        return {**arguments, "params_json": json.dumps(logged_params(arguments), sort_keys=True)}


def logged_params(arguments: dict) -> dict:
    """The pipeline's arguments as the MLflow run logs them: what the pipeline was asked to do."""
    return {k: v for k, v in arguments.items() if k not in ("mlflow_uri", "trigger_info", "params_json")}


def pipeline_signature(return_annotation: type = str) -> inspect.Signature:
    """``TrainParams`` as a function signature, plus ``params_json``: what the KFP pipeline declares."""
    hints = typing.get_type_hints(TrainParams)
    parameters = [
        inspect.Parameter(
            f.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=inspect.Parameter.empty if f.default is MISSING else f.default,
            annotation=hints[f.name],
        )
        for f in fields(TrainParams)
    ]
    parameters.append(inspect.Parameter("params_json", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="{}",
                                        annotation=str))  # fmt: skip
    return inspect.Signature(parameters, return_annotation=return_annotation)
