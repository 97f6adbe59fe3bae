"""What a ``train-and-register`` run gives back: :class:`TrainResult`, the same from every runner.

Its own module, apart from ``pipelines.params``: the KFP steps that return it (promote) then need
neither the settings nor pydantic, which ``TrainParams`` reads its defaults from.
"""

from dataclasses import asdict, dataclass, field, fields


@dataclass
class TrainResult:
    """The gate's outcome of one run, the same from the embedded run and from the KFP API."""

    run_id: str
    model_name: str
    model_version: str
    metrics: dict[str, float]
    promoted: bool
    reason: str
    champion_version: str | None
    previous_champion_version: str | None = None
    step_seconds: dict[str, float] = field(default_factory=dict)
    log: str | None = None  # the embedded run's log file
    kfp_run_id: str | None = None  # set by a run on the KFP API
    kfp_run_url: str | None = None
    submission_id: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> "TrainResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)
