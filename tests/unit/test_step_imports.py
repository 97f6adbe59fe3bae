"""Each KFP step is a process of its own (kfp.local, the cluster): it imports only what it needs.

A step pays for every package it imports, before any work (here: scikit-learn ~1.3 s, MLflow
~1.5 s, pydantic + the settings ~0.2 s of CPU). Each case runs a step's function in a fresh
interpreter, as its component does, and lists the heavy packages it loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("sklearn", "scipy", "mlflow", "skops", "pydantic", "pydantic_settings", "sandbox", "httpx")

PREPARE = """
import json, sys
import pandas as pd
from pipelines import steps
frame, reference = steps.load_data("synthetic", "none", 1.0, 600, 0)
"""
STEPS = {
    "load-data": ("", set()),
    "validate-data": ('steps.validate_and_split(frame, "synthetic", 0)', set()),
    # The model is fitted by the step and read back by evaluate: scikit-learn, never MLflow.
    "train": ('steps.train(frame, "synthetic", max_iter=5)', {"sklearn", "scipy"}),
    "evaluate": (
        'm = steps.train(frame, "synthetic", max_iter=5); steps.evaluate(m, frame, "synthetic")',
        {"sklearn", "scipy"},
    ),
}


def heavy_imports(code: str) -> set[str]:
    report = f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    done = subprocess.run(
        [sys.executable, "-c", PREPARE + code + "\n" + report],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_step_imports_only_what_it_needs(step):
    code, allowed = STEPS[step]
    assert heavy_imports(code) == allowed


def test_the_heavy_list_would_see_an_import():
    assert heavy_imports("import sklearn.base, pydantic") >= {"sklearn", "pydantic"}


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_trees_openmp_threads_sleep_while_they_wait_unless_the_caller_says_otherwise(given, expected):
    """libgomp reads OMP_WAIT_POLICY when scikit-learn first loads it: importing pipelines sets it first
    (spinning threads made model fits and scorings 7-60x slower on busy cores)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | (
        {"OMP_WAIT_POLICY": given} if given else {}
    )
    code = "import os, sys\nfrom pipelines import train\nimport sklearn.ensemble\nprint(os.environ.get('OMP_WAIT_POLICY'))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [expected]
