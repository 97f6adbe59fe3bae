"""What the kind stack asks of Docker: summed CPU and memory requests and limits (`make footprint`).

Ours come from the rendered manifests (``kubectl kustomize manifests/overlays/kind``), so the
figures cannot drift from what is applied. Kubeflow Pipelines' upstream manifests are fetched from
GitHub at ``make up`` and cannot be rendered offline: their requests are the figures written in the
upstream manifests of the pinned release line (``KFP_REQUESTS``), and the kind node's own system
pods are kind's and Kubernetes' defaults (``KIND_SYSTEM_REQUESTS``). Most KFP pods set no limits.

Run: ``python -m sandbox.footprint [--json] [--budget-gib 8]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from sandbox.names import REPO_ROOT

OVERLAY = REPO_ROOT / "manifests" / "overlays" / "kind"
MIB = 1024 * 1024
GIB = 1024 * MIB

# Kubeflow Pipelines 2.17 standalone (env/platform-agnostic): requests as written in the upstream
# manifests (no limits are set there). Pods without requests are listed with 0: they still use
# memory (each ~20-80 MiB in practice), which `HEADROOM_GIB` below leaves room for.
KFP_REQUESTS: dict[str, tuple[str, str]] = {
    "ml-pipeline (API server)": ("250m", "500Mi"),
    "mysql": ("100m", "800Mi"),
    "ml-pipeline-persistenceagent": ("120m", "500Mi"),
    "workflow-controller (Argo)": ("100m", "500Mi"),
    "seaweedfs (S3 artifacts)": ("32m", "128Mi"),
    "ml-pipeline-ui": ("10m", "70Mi"),
    "ml-pipeline-scheduledworkflow": ("0", "0"),
    "ml-pipeline-viewer-crd": ("0", "0"),
    "cache-server": ("0", "0"),
    "metadata-grpc-deployment": ("0", "0"),
    "metadata-envoy-deployment": ("0", "0"),
    "metadata-writer": ("0", "0"),
}
# The kind node's control plane and add-ons (kubeadm / kind defaults).
KIND_SYSTEM_REQUESTS: dict[str, tuple[str, str]] = {
    "kube-apiserver": ("250m", "0"),
    "kube-controller-manager": ("200m", "0"),
    "kube-scheduler": ("100m", "0"),
    "etcd": ("100m", "100Mi"),
    "coredns x2": ("200m", "140Mi"),
    "kindnet": ("100m", "50Mi"),
    "local-path-provisioner, kube-proxy": ("0", "0"),
}
# Docker Desktop's VM keeps part of its memory for itself; unrequested pods, pipeline step pods
# (one at a time, ~0.5 GiB each: the project image running one step) and page cache need the rest.
VM_RESERVE_GIB = 0.5
HEADROOM_GIB = 1.0


def cpu_millis(quantity: str | int | float | None) -> int:
    """Kubernetes CPU quantity -> millicores ("250m" -> 250, "1" -> 1000, "0.5" -> 500)."""
    if quantity in (None, ""):
        return 0
    text = str(quantity)
    if text.endswith("m"):
        return int(text[:-1])
    return round(float(text) * 1000)


_MEM_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip


def memory_bytes(quantity: str | int | float | None) -> int:
    """Kubernetes memory quantity -> bytes ("512Mi", "1Gi", "1G", "1e9", 1024)."""
    if quantity in (None, ""):
        return 0
    match = re.fullmatch(r"([0-9.]+(?:[eE][0-9+]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(quantity))
    if match is None:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return round(float(match.group(1)) * _MEM_UNITS[match.group(2) or ""])


@dataclass
class Footprint:
    name: str
    replicas: int
    cpu_request_m: int
    cpu_limit_m: int
    memory_request: int
    memory_limit: int


def pod_footprint(pod_spec: dict) -> tuple[int, int, int, int]:
    """Effective pod requests/limits: the sum of the containers, or the largest init container if bigger."""

    def resources(container: dict) -> tuple[int, int, int, int]:
        res = container.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        return (
            cpu_millis(req.get("cpu")), cpu_millis(lim.get("cpu")),
            memory_bytes(req.get("memory")), memory_bytes(lim.get("memory")),
        )  # fmt: skip

    main = [resources(c) for c in pod_spec.get("containers", [])]
    init = [resources(c) for c in pod_spec.get("initContainers", [])]
    total = [sum(values) for values in zip(*main, strict=True)] if main else [0, 0, 0, 0]
    for values in init:
        total = [max(a, b) for a, b in zip(total, values, strict=True)]
    return tuple(total)  # type: ignore[return-value]


def workloads(objects: list[dict]) -> list[Footprint]:
    """One row per Deployment/StatefulSet/DaemonSet in rendered manifests (replicas applied)."""
    rows = []
    for obj in objects:
        if obj.get("kind") not in {"Deployment", "StatefulSet", "DaemonSet"}:
            continue
        replicas = obj["spec"].get("replicas", 1)
        cpu_req, cpu_lim, mem_req, mem_lim = pod_footprint(obj["spec"]["template"]["spec"])
        rows.append(
            Footprint(
                obj["metadata"]["name"], replicas,
                cpu_req * replicas, cpu_lim * replicas, mem_req * replicas, mem_lim * replicas,
            )
        )  # fmt: skip
    return rows


def documented(figures: dict[str, tuple[str, str]]) -> list[Footprint]:
    return [
        Footprint(name, 1, cpu_millis(cpu), 0, memory_bytes(mem), 0) for name, (cpu, mem) in figures.items()
    ]


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if found is None:
        raise SystemExit("kubectl is needed to render the manifests: see docs/kind.md (requirements)")
    return found


def render(path: Path = OVERLAY) -> list[dict]:
    import yaml

    out = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def totals(rows: list[Footprint]) -> Footprint:
    return Footprint(
        "total", sum(r.replicas for r in rows),
        sum(r.cpu_request_m for r in rows), sum(r.cpu_limit_m for r in rows),
        sum(r.memory_request for r in rows), sum(r.memory_limit for r in rows),
    )  # fmt: skip


def summary(objects: list[dict], budget_gib: float = 8.0) -> dict:
    ours, kfp, system = workloads(objects), documented(KFP_REQUESTS), documented(KIND_SYSTEM_REQUESTS)
    t_ours, t_kfp, t_sys = totals(ours), totals(kfp), totals(system)
    allocatable = (budget_gib - VM_RESERVE_GIB) * GIB
    requested = t_ours.memory_request + t_kfp.memory_request + t_sys.memory_request
    # Worst case we allow ourselves: every one of our pods at its limit, KFP and the node at their requests.
    worst = t_ours.memory_limit + t_kfp.memory_request + t_sys.memory_request + HEADROOM_GIB * GIB
    return {
        "ours": [asdict(r) for r in ours],
        "kfp": [asdict(r) for r in kfp],
        "kind_system": [asdict(r) for r in system],
        "totals": {"ours": asdict(t_ours), "kfp": asdict(t_kfp), "kind_system": asdict(t_sys)},
        "budget_gib": budget_gib,
        "allocatable_bytes": int(allocatable),
        "memory_requested_bytes": requested,
        "memory_worst_case_bytes": int(worst),
        "cpu_requested_m": t_ours.cpu_request_m + t_kfp.cpu_request_m + t_sys.cpu_request_m,
        # Schedulable: the requests fit. Safe: even with all our pods at their limits at once.
        "fits": requested <= allocatable,
        "fits_worst_case": worst <= allocatable,
    }


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}" if n else "-"


def _cpu(m: int) -> str:
    return f"{m / 1000:.2f}" if m else "-"


def print_summary(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    table = Table(title="kind stack footprint (CPU cores, memory GiB)", title_justify="left")
    for column in ("group", "workload", "CPU req", "CPU limit", "mem req", "mem limit"):
        left = column in {"group", "workload"}
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    groups = [
        ("ours (rendered)", result["ours"], result["totals"]["ours"]),
        ("KFP (upstream)", result["kfp"], result["totals"]["kfp"]),
        ("kind node", result["kind_system"], result["totals"]["kind_system"]),
    ]
    for label, rows, total in groups:
        for i, row in enumerate(rows):
            table.add_row(
                label if i == 0 else "", row["name"],
                _cpu(row["cpu_request_m"]), _cpu(row["cpu_limit_m"]),
                _gib(row["memory_request"]), _gib(row["memory_limit"]),
            )  # fmt: skip
        table.add_row(
            "", "[bold]subtotal[/]", _cpu(total["cpu_request_m"]), _cpu(total["cpu_limit_m"]),
            _gib(total["memory_request"]), _gib(total["memory_limit"]), end_section=True,
        )  # fmt: skip
    console.print(table)

    def verdict(ok: bool) -> str:
        return "[green]fits[/]" if ok else "[red]does not fit[/]"

    console.print(
        f"Docker with {result['budget_gib']:g} GiB: {result['allocatable_bytes'] / GIB:.2f} GiB for pods after "
        f"the VM's own ~{VM_RESERVE_GIB} GiB.\n"
        f"  requests: {result['memory_requested_bytes'] / GIB:.2f} GiB, {result['cpu_requested_m'] / 1000:.2f} CPU"
        f" -> {verdict(result['fits'])}\n"
        f"  worst case (our pods at their limits, KFP and the node at their requests, {HEADROOM_GIB:g} GiB for a "
        f"pipeline step and unrequested pods): {result['memory_worst_case_bytes'] / GIB:.2f} GiB"
        f" -> {verdict(result['fits_worst_case'])}"
    )
    console.print(
        "KFP and kind node figures are upstream requests, not renderable offline (see sandbox/footprint.py)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--budget-gib", type=float, default=8.0, help="Docker's memory (default 8)")
    parser.add_argument("--overlay", type=Path, default=OVERLAY, help="kustomization to render")
    args = parser.parse_args(argv)
    result = summary(render(args.overlay), args.budget_gib)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_summary(result)
    return 0 if result["fits"] and result["fits_worst_case"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
