"""What a ``train-and-register`` run takes (:class:`TrainParams`) and gives back (:class:`TrainResult`).

One list of parameters, one set of defaults: the pipeline's signature (what KFP compiles and its UI
shows), the CLI's defaults, the retrainer's run and both runners derive from ``TrainParams``.
Defaults that are also settings (model name, gate, the production mix) are read from ``Settings``.
"""

# No `from __future__ import annotations`: the pipeline signature hands these annotations to KFP.
import inspect
import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields

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
    # The estimator's hyperparameters (HistGradientBoostingClassifier).
    learning_rate: float = 0.1
    max_iter: int = 200
    max_depth: int = 6
    min_samples_leaf: int = 20
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


HYPERPARAMS = ("learning_rate", "max_iter", "max_depth", "min_samples_leaf")
DEFAULT_HYPERPARAMS = {f.name: f.default for f in fields(TrainParams) if f.name in HYPERPARAMS}


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


@dataclass
class TrainResult:
    """The gate's outcome of one run, the same from the embedded run and from the KFP API.

    ``outcome`` is what the offline gate did (its ``gate.decision`` tag): ``promoted`` (no champion
    yet: champion at once), ``shadow`` (passed: the challenger runs in shadow until the live gate
    decides, see docs/releases.md) or ``rejected``; ``promoted`` is true only for the first.
    """

    run_id: str
    model_name: str
    model_version: str
    metrics: dict[str, float]
    promoted: bool
    reason: str
    champion_version: str | None
    previous_champion_version: str | None = None
    outcome: str = ""
    step_seconds: dict[str, float] = field(default_factory=dict)
    log: str | None = None  # the embedded run's log file
    kfp_run_id: str | None = None  # set by a run on the KFP API
    kfp_run_url: str | None = None
    submission_id: str | None = None

    def __post_init__(self) -> None:
        if not self.outcome:  # a result written before outcomes existed
            self.outcome = "promoted" if self.promoted else "rejected"

    @classmethod
    def from_dict(cls, data: dict) -> "TrainResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)
