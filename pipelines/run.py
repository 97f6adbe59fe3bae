"""Run the pipeline embedded (kfp.local, one subprocess per step) or compile it to KFP IR."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from pipelines.params import TrainParams
from pipelines.pipeline import train_and_register
from pipelines.result import TrainResult


def compile_pipeline(output: str | Path) -> Path:
    from kfp import compiler

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(train_and_register, str(output))
    return output


def run_local(params: TrainParams, pipeline_root: str | Path) -> TrainResult:
    """Run ``train-and-register`` with kfp.local in this Python environment; return the gate's result."""
    from kfp import local

    Path(pipeline_root).mkdir(parents=True, exist_ok=True)
    # use_venv=False: a per-task venv would need the network and re-install the project each step.
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    task = train_and_register(**params.arguments())
    return TrainResult.from_dict(json.loads(task.output))


RESULT_MARKER = "SANDBOX_RESULT "
# The embedded run's environment (its steps inherit it; what the caller's environment sets wins;
# OMP_WAIT_POLICY comes with os.environ, from pipelines/__init__.py): no MLflow telemetry, else each
# MLflow step starts sender threads and fetches a remote config.
PIPELINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - INFO - Executing task '([\w-]+)'")
FINISHED = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - \w+ - Task '([\w-]+)' finished with status (\w+)")
ERROR_LINE = re.compile(r"^\s*([\w.]*(?:Error|Exception)): (.+)$")


class PipelineError(RuntimeError):
    """The run failed; the message names the step, its first error and the full log."""


class Watchdog:
    """Kills a child's process group when its deadline passes, whether or not it prints anything.

    (A deadline checked between output lines never fires on a child that hangs silently.)
    """

    def __init__(self, proc: subprocess.Popen, timeout: float | None):
        self.proc, self.fired = proc, False
        self.timer = None if timeout is None else threading.Timer(timeout, self._kill)
        if self.timer is not None:
            self.timer.daemon = True

    def _kill(self) -> None:
        self.fired = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self) -> Watchdog:
        if self.timer is not None:
            self.timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.timer is not None:
            self.timer.cancel()


def run_in_child(
    params: TrainParams,
    pipeline_root: str | Path,
    log_path: Path,
    on_step: Callable[[str, str, float], None] = lambda step, state, seconds: None,
    timeout: float | None = None,
) -> TrainResult:
    """Run the pipeline embedded in a child process (``python -m pipelines.run``), following its steps.

    ``on_step(step, state, seconds)`` sees each step start and finish. Returns the gate's result
    with ``step_seconds`` and ``log``; raises :class:`PipelineError` naming the failing step.
    """
    command = [sys.executable, "-m", "pipelines.run", json.dumps(asdict(params)), str(pipeline_root)]
    started: dict[str, float] = {}
    states: dict[str, str] = {}
    step_seconds: dict[str, float] = {}
    result, error = None, None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env={**PIPELINE_ENV, **os.environ},
            start_new_session=True,  # its own process group: the watchdog kills the steps it started too
        ) as proc,
        Watchdog(proc, timeout) as watchdog,
    ):  # fmt: skip
        for raw in proc.stdout:
            log.write(raw)
            line = ANSI.sub("", raw.rstrip("\n"))
            if line.startswith(RESULT_MARKER):
                result = TrainResult.from_dict(json.loads(line[len(RESULT_MARKER) :]))
            elif match := STARTED.match(line):
                started[match[2]] = time.monotonic()
                states[match[2]] = "running"
                on_step(match[2], "running", 0.0)
            elif match := FINISHED.match(line):
                step = match[2]
                step_seconds[step] = round(time.monotonic() - started.get(step, time.monotonic()), 2)
                states[step] = match[3].lower()
                on_step(step, match[3].lower(), step_seconds[step])
            elif (match := ERROR_LINE.match(line)) and error is None:  # the step's own error, not the wrap-up
                error = f"{match[1].rsplit('.', 1)[-1]}: {match[2]}"
    if watchdog.fired:
        error = f"timed out after {timeout:.0f}s"
    if proc.returncode != 0 or result is None:
        failed = next((step for step, state in states.items() if state != "success"), "pipeline")
        raise PipelineError(f"step {failed!r} failed: {error or 'see the log'} (full log: {log_path})")
    result.step_seconds, result.log = step_seconds, str(log_path)
    return result


def main() -> None:
    """``python -m pipelines.run ARGS_JSON PIPELINE_ROOT``: run embedded, print the result on a marked line.

    The control plane runs the pipeline in a child process so it can follow the
    steps from kfp.local's log and keep its own terminal output clean.
    """
    params, pipeline_root = TrainParams(**json.loads(sys.argv[1])), sys.argv[2]
    result = run_local(params, pipeline_root)
    print(RESULT_MARKER + json.dumps(result.to_dict()), flush=True)


if __name__ == "__main__":
    main()
