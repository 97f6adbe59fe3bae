"""What a ``train-and-register`` run gives back: :class:`TrainResult`, the same from every runner.

Its own module, apart from ``pipelines.params``: the KFP steps that return it (promote) then need
neither the settings nor pydantic, which ``TrainParams`` reads its defaults from.
"""

from dataclasses import asdict, dataclass, field, fields


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
