"""Run the pipeline embedded (kfp.local, one subprocess per step) or compile it to KFP IR."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.pipeline import params_record, train_and_register


def compile_pipeline(output: str | Path) -> Path:
    from kfp import compiler

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(train_and_register, str(output))
    return output


def run_local(arguments: dict, pipeline_root: str | Path) -> dict:
    """Run ``train-and-register`` with kfp.local in this Python environment; return the gate's result."""
    from kfp import local

    Path(pipeline_root).mkdir(parents=True, exist_ok=True)
    # use_venv=False: a per-task venv would need the network and re-install the project each step.
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    arguments = {**arguments, "params_json": params_record(arguments)}
    task = train_and_register(**arguments)
    return json.loads(task.output)


RESULT_MARKER = "SANDBOX_RESULT "


def main() -> None:
    """``python -m pipelines.run ARGS_JSON PIPELINE_ROOT``: run embedded, print the result on a marked line.

    The control plane runs the pipeline in a child process so it can follow the
    steps from kfp.local's log and keep its own terminal output clean.
    """
    import sys

    arguments, pipeline_root = json.loads(sys.argv[1]), sys.argv[2]
    result = run_local(arguments, pipeline_root)
    print(RESULT_MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
