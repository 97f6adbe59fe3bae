"""Helpers of the offline cluster checks: render kustomizations once (cached), find the tools."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sandbox.settings import REPO_ROOT

MANIFESTS = REPO_ROOT / "manifests"
MONITORING = REPO_ROOT / "monitoring"
BASE = MANIFESTS / "base"
KIND_OVERLAY = MANIFESTS / "overlays" / "kind"
KIND_CONFIG = REPO_ROOT / "kind-config.yaml"
NAMESPACE = "mlops"
# DESIGN.md: component -> container port (Grafana listens on 3000 in its pod, host port 3001).
PORTS = {
    "mlflow": 5000,
    "serving": 3000,
    "monitor": 8001,
    "retrainer": 8002,
    "prometheus": 9090,
    "alertmanager": 9093,
    "grafana": 3000,
}
PROJECT_COMPONENTS = ["mlflow", "serving", "monitor", "retrainer"]
# DESIGN.md: host port of each UI on kind (the retrainer has none).
HOST_PORTS = {
    "mlflow": 5000,
    "serving": 3000,
    "monitor": 8001,
    "prometheus": 9090,
    "alertmanager": 9093,
    "grafana": 3001,
    "ml-pipeline-ui-nodeport": 8080,
}


def tool(name: str, hint: str) -> str:
    """A command next to this Python (the venv) or on PATH; a clear failure if missing."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: {hint}")
    return found


def kubectl() -> str:
    return tool("kubectl", "run `make setup` (it installs kubectl if the machine has none), see docs/kind.md")


@functools.cache
def render_text(path: Path) -> str:
    result = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {path.relative_to(REPO_ROOT)} failed:\n{result.stderr}"
    return result.stdout


def render(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(render_text(path)) if doc]


def kustomizations() -> list[Path]:
    """Every kustomization of the repo except manifests/kfp (remote upstream bases, fetched at `make up`)."""
    found = sorted(p.parent for root in (MANIFESTS, MONITORING) for p in root.glob("**/kustomization.yaml"))
    return [p for p in found if not p.is_relative_to(MANIFESTS / "kfp")]


def kind_node_version() -> str:
    """The Kubernetes version of the pinned kind node image, e.g. '1.35.8'."""
    config = yaml.safe_load(KIND_CONFIG.read_text())
    image = config["nodes"][0]["image"]
    match = re.fullmatch(r"kindest/node:v(\d+\.\d+\.\d+)@sha256:[0-9a-f]{64}", image)
    assert match, f"the kind node image must be pinned by version tag and digest: {image}"
    return match.group(1)


def objects_of(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}
