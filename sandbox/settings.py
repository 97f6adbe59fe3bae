"""One settings object for the whole platform (environment prefix ``SANDBOX_``).

Importing this module has no side effects: nothing is created on disk and no
client is configured until a caller asks for it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore")

    home: Path = Field(
        REPO_ROOT / ".sandbox", description="State directory: MLflow store, logs, pipeline outputs"
    )
    host: str = "127.0.0.1"

    mlflow_port: int = 5000
    serving_port: int = 3000
    monitor_port: int = 8001
    retrainer_port: int = 8002
    prometheus_port: int = 9090
    alertmanager_port: int = 9093

    # Set to reach an MLflow that the local stack does not run (e.g. in the cluster).
    mlflow_tracking_uri: str | None = None
    model_name: str = "loan-default"
    experiment: str = "train-and-register"

    # Promotion gate: absolute floor and tolerance against the current champion.
    gate_metric: str = "roc_auc"
    gate_min_score: float = 0.70
    gate_tolerance: float = 0.01

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def kfp_root(self) -> Path:
        return self.home / "kfp"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"
