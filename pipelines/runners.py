"""Who runs ``train-and-register``: one interface, an embedded and a KFP implementation, chosen once.

As kfp.local has one task handler per backend, a run here has one runner per place it can run:
:class:`EmbeddedRunner` (kfp.local in a child process, on this machine) and :class:`KfpRunner`
(the Kubeflow Pipelines API of a cluster). ``runner_for(settings)`` picks one from the settings
(``SANDBOX_KFP_HOST`` set = KFP); the CLI and the retrainer both ask it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipelines.params import TrainParams
from pipelines.result import TrainResult

OnStep = Callable[[str, str, float], None]  # (step, state, seconds): running, success, failure, ...


def no_step(step: str, state: str, seconds: float) -> None:
    pass


class Runner(Protocol):
    def run(self, params: TrainParams, on_step: OnStep = no_step, log_name: str | None = None) -> TrainResult:
        """Run the pipeline to its gate's decision; raise (PipelineError / RemoteError) naming the failed step."""
        ...


@dataclass
class EmbeddedRunner:
    pipeline_root: Path
    logs_dir: Path
    timeout: float | None = None

    def run(self, params: TrainParams, on_step: OnStep = no_step, log_name: str | None = None) -> TrainResult:
        from pipelines.run import run_in_child

        log_name = log_name or f"train-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        return run_in_child(
            params, self.pipeline_root, self.logs_dir / f"{log_name}.log", on_step, self.timeout
        )


@dataclass
class KfpRunner:
    host: str
    timeout: float
    # From outside the cluster (`sandbox train --kind`): the pods get the in-cluster URLs, and the
    # outcome is read from this MLflow (the host port). Inside (the retrainer), params are as given.
    results_mlflow_uri: str | None = None
    on_submitted: Callable[[str, str], None] | None = None

    def run(self, params: TrainParams, on_step: OnStep = no_step, log_name: str | None = None) -> TrainResult:
        from pipelines.remote import for_cluster, submit_and_wait

        if self.results_mlflow_uri is not None:
            params = for_cluster(params)
        return submit_and_wait(
            self.host, params.arguments(), self.timeout, on_step,
            results_mlflow_uri=self.results_mlflow_uri, on_submitted=self.on_submitted,
        )  # fmt: skip


def runner_for(
    settings, timeout: float | None = None, from_host: bool = False, on_submitted=None
) -> EmbeddedRunner | KfpRunner:
    """The KFP runner when ``settings.kfp_host`` is set, else the embedded one."""
    if settings.kfp_host:
        return KfpRunner(
            settings.kfp_host, timeout or settings.retrain_timeout_seconds,
            results_mlflow_uri=settings.mlflow_uri if from_host else None, on_submitted=on_submitted,
        )  # fmt: skip
    return EmbeddedRunner(settings.kfp_root, settings.logs_dir, timeout)
