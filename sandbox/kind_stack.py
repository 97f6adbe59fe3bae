"""The full stack on a kind cluster: preflight, the phases of ``sandbox up --kind``, and cluster status.

Each phase is a plain function over a command runner (``run(args, input=, timeout=)``
returning a :class:`CommandResult`), so tests drive them with a fake runner. Every
failure is a :class:`KindStackError` that names the step, the command and the tail of
its stderr, and says what to do next.

Only the standard library is imported at module level: ``python3 -m sandbox.kind_stack
preflight`` (what ``make up`` runs first) answers in seconds, before any venv exists.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER = "mlops-sandbox"
CONTEXT = f"kind-{CLUSTER}"
NAMESPACE = "mlops"
KFP_NAMESPACE = "kubeflow"
# The same default as pipelines.components.PROJECT_IMAGE (a unit test keeps them equal).
IMAGE = os.environ.get("SANDBOX_IMAGE", "mlops-sandbox:0.1.0")
KIND_CONFIG = "kind-config.yaml"
OVERLAY = "manifests/overlays/kind"
KFP_DIR = "manifests/kfp"
# Upstream installs KFP's cluster-scoped resources (CRDs) first, then the rest once the CRDs exist.
# Its docs wait for crd/applications.app.k8s.io; every CRD is waited for here, which holds whether
# or not a release still ships that one.
KFP_CLUSTER_SCOPED_DIRS = ("manifests/kfp/cluster-scoped", "manifests/kfp/cluster-scoped-resources")
DEPLOYMENTS = ("mlflow", "serving", "monitor", "retrainer", "prometheus", "alertmanager", "grafana")
# serving is ready only once it has loaded a champion, so its rollout is awaited after the first run.
AFTER_FIRST_RUN = ("serving",)
GRAFANA_SECRET = "grafana-admin"
URLS = {
    "MLflow": "http://127.0.0.1:5000",
    "serving (API docs)": "http://127.0.0.1:3000/docs",
    "monitor": "http://127.0.0.1:8001",
    "Prometheus": "http://127.0.0.1:9090",
    "Alertmanager": "http://127.0.0.1:9093",
    "Grafana": "http://127.0.0.1:3001",
    "Kubeflow Pipelines": "http://127.0.0.1:8080",
}
HOST_PORTS = tuple(int(url.split(":")[2].split("/")[0]) for url in URLS.values())
# Docker Desktop set to 8 GB shows about 7.7 GiB in `docker info`; warn below that.
MIN_DOCKER_MEMORY = int(7.5 * 2**30)
INSTALL_HINTS = {
    "docker": "install Docker Desktop (macOS, Windows) or Docker Engine (Linux: https://docs.docker.com/engine/install/)",
    "kind": "install kind: `brew install kind`, or `go install sigs.k8s.io/kind@latest`, "
    "or a release binary (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)",
    "kubectl": "install kubectl: `brew install kubectl`, or https://kubernetes.io/docs/tasks/tools/",
}
NO_DOCKER = "Without Docker, `make demo` runs the same platform embedded on this machine."


class KindStackError(RuntimeError):
    """A step of the kind stack failed; the message names it and says what to do next."""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""


Runner = Callable[..., CommandResult]


def run_command(
    args: Sequence[str], *, input: str | None = None, timeout: float | None = None
) -> CommandResult:
    """The real runner: run ``args``, capture its output; a missing program is exit code 127."""
    try:
        done = subprocess.run(list(args), input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return CommandResult(127, "", f"{args[0]}: command not found")
    except subprocess.TimeoutExpired as exc:
        out = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return CommandResult(124, "", f"{out}\ntimed out after {timeout:.0f}s")
    return CommandResult(done.returncode, done.stdout, done.stderr)


def tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def check(run: Runner, step: str, args: Sequence[str], hint: str = "", **kwargs) -> CommandResult:
    """Run a command; on failure raise a ``KindStackError`` naming the step, the command and its stderr."""
    result = run(list(args), **kwargs)
    if result.returncode != 0:
        detail = tail(result.stderr or result.stdout) or "(no output)"
        raise KindStackError(
            f"{step} failed: `{' '.join(args)}` exited {result.returncode}:\n{detail}"
            + (f"\n{hint}" if hint else "")
        )
    return result


def kubectl(*args: str) -> list[str]:
    """A kubectl command against the sandbox's cluster, whatever the current context is."""
    return ["kubectl", "--context", CONTEXT, *args]


# --- preflight ------------------------------------------------------------------------------


@dataclass
class Preflight:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self) -> str:
        return "\n".join(
            ["`sandbox up --kind` cannot start:", *(f"  - {p}" for p in self.problems), NO_DOCKER]
        )


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def preflight(
    run: Runner = run_command,
    which: Callable[[str], str | None] | None = None,
    port_free: Callable[[int], bool] | None = None,
    min_memory: int = MIN_DOCKER_MEMORY,
) -> Preflight:
    """Docker daemon reachable, kind and kubectl present, Docker memory, host ports: in seconds."""
    which = which or shutil.which
    port_free = port_free or port_is_free
    report = Preflight()
    missing = [tool for tool in ("docker", "kind", "kubectl") if which(tool) is None]
    report.problems += [f"{tool} is not installed: {INSTALL_HINTS[tool]}" for tool in missing]
    docker_ok = False
    if "docker" not in missing:
        info = run(["docker", "info", "--format", "{{json .MemTotal}}"], timeout=20)
        if info.returncode != 0:
            report.problems.append(
                "the Docker daemon is not reachable (`docker info`: "
                f"{tail(info.stderr, 2) or 'no answer'}): start Docker Desktop, or on Linux "
                "`sudo systemctl start docker` (and be in the `docker` group)"
            )
        else:
            docker_ok = True
            try:
                memory = int(json.loads(info.stdout.strip() or "0"))
            except ValueError:
                memory = 0
            if 0 < memory < min_memory:
                report.warnings.append(
                    f"Docker has {memory / 2**30:.1f} GiB of memory; the full stack (KFP included) wants "
                    "8 GB: raise it (Docker Desktop: Settings > Resources > Memory) or expect evictions"
                )
    if docker_ok and "kind" not in missing and not cluster_exists(run):
        taken = [port for port in HOST_PORTS if not port_free(port)]
        if taken:
            report.problems.append(
                f"host port(s) {', '.join(map(str, taken))} are taken, and the cluster maps them: "
                "stop what holds them (the embedded stack: `sandbox down`)"
            )
    return report


# --- phases ---------------------------------------------------------------------------------


def cluster_exists(run: Runner) -> bool:
    result = run(["kind", "get", "clusters"], timeout=30)
    return result.returncode == 0 and CLUSTER in result.stdout.split()


def create_cluster(run: Runner, root: Path = REPO_ROOT) -> str:
    """Create the kind cluster from kind-config.yaml, unless it exists already."""
    if cluster_exists(run):
        check(run, "cluster check", kubectl("cluster-info"), hint="`make down` and `make up` start afresh")
        return f"cluster {CLUSTER} exists; kept"
    config = str(root / KIND_CONFIG)
    check(
        run,
        "create cluster",
        ["kind", "create", "cluster", "--name", CLUSTER, "--config", config, "--wait", "180s"],
        hint="a port already in use or too little Docker memory are the usual causes; see docs/kind.md",
        timeout=600,
    )
    return f"cluster {CLUSTER} created"


def build_image(run: Runner, root: Path = REPO_ROOT, image: str = IMAGE) -> str:
    """Build the one project image (Docker's layer cache makes a rebuild of unchanged code quick)."""
    command = ["docker", "build", "-t", image]
    if base := os.environ.get("SANDBOX_BASE_IMAGE"):
        command += ["--build-arg", f"BASE_IMAGE={base}"]
    check(run, "build image", [*command, str(root)], timeout=1800)
    return f"built {image}"


def load_image(run: Runner, image: str = IMAGE) -> str:
    check(run, "load image", ["kind", "load", "docker-image", image, "--name", CLUSTER], timeout=600)
    return f"{image} loaded into the cluster's node"


def install_kfp(run: Runner, root: Path = REPO_ROOT, timeout: float = 1200) -> str:
    """Kubeflow Pipelines standalone: cluster-scoped resources, their CRD established, then the rest."""
    wait_crd = kubectl("wait", "--for", "condition=established", "--timeout=120s", "crd", "--all")
    scoped = next((root / d for d in KFP_CLUSTER_SCOPED_DIRS if (root / d).is_dir()), None)
    if scoped is not None:
        check(run, "install KFP (cluster-scoped)", kubectl("apply", "-k", str(scoped)), timeout=600)
        check(run, "install KFP (CRDs)", wait_crd, timeout=150)
    apply = kubectl("apply", "-k", str(root / KFP_DIR))
    first = run(apply, timeout=600)
    if first.returncode != 0:
        # One kustomization with CRDs and their objects: the objects fail until the CRDs exist.
        check(run, "install KFP (CRDs)", wait_crd, timeout=150)
        check(run, "install KFP", apply, timeout=600)
    check(
        run,
        "wait for KFP",
        kubectl(
            "wait", "--for=condition=available", "deployment", "--all", "-n", KFP_NAMESPACE,
            f"--timeout={int(timeout)}s",
        ),
        hint=f"see `kubectl --context {CONTEXT} get pods -n {KFP_NAMESPACE}`; KFP's images are large, "
        "a slow first pull can take longer (run `make up` again: it continues)",
        timeout=timeout + 60,
    )  # fmt: skip
    return f"Kubeflow Pipelines available in namespace {KFP_NAMESPACE}"


def ensure_namespace(run: Runner) -> None:
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    check(run, "create namespace", kubectl("apply", "-f", "-"), input=json.dumps(manifest), timeout=60)


def ensure_grafana_secret(
    run: Runner, make_password: Callable[[], str] = lambda: secrets.token_urlsafe(24)
) -> str:
    """Create the Grafana admin Secret once, with a random password (never on a command line, never in git)."""
    ensure_namespace(run)
    found = run(kubectl("get", "secret", GRAFANA_SECRET, "-n", NAMESPACE, "-o", "name"), timeout=60)
    if found.returncode == 0:
        return f"secret {NAMESPACE}/{GRAFANA_SECRET} exists; kept"
    if "notfound" not in found.stderr.replace(" ", "").lower():
        raise KindStackError(
            f"read the Grafana secret failed: exit {found.returncode}:\n{tail(found.stderr) or '(no output)'}"
        )
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": GRAFANA_SECRET, "namespace": NAMESPACE},
        "type": "Opaque",
        "stringData": {"admin-user": "admin", "admin-password": make_password()},
    }
    check(run, "create the Grafana secret", kubectl("apply", "-f", "-"), input=json.dumps(secret), timeout=60)
    return f"secret {NAMESPACE}/{GRAFANA_SECRET} created (user admin, random password)"


def apply_overlay(run: Runner, root: Path = REPO_ROOT) -> str:
    check(run, "apply manifests", kubectl("apply", "-k", str(root / OVERLAY)), timeout=300)
    return f"applied {OVERLAY}"


def wait_rollouts(run: Runner, names: Iterable[str], timeout: float = 600) -> str:
    names = list(names)
    for name in names:
        check(
            run,
            f"rollout of {name}",
            kubectl("rollout", "status", f"deployment/{name}", "-n", NAMESPACE, f"--timeout={int(timeout)}s"),
            hint=f"see `kubectl --context {CONTEXT} -n {NAMESPACE} describe deployment {name}` and its pods' logs",
            timeout=timeout + 60,
        )
    return f"ready: {', '.join(names)}"


def delete_cluster(run: Runner) -> str:
    if not cluster_exists(run):
        return f"no cluster {CLUSTER}"
    check(run, "delete cluster", ["kind", "delete", "cluster", "--name", CLUSTER], timeout=300)
    return f"cluster {CLUSTER} deleted"


def grafana_password_command() -> str:
    return (
        f"kubectl --context {CONTEXT} -n {NAMESPACE} get secret {GRAFANA_SECRET} "
        "-o jsonpath='{.data.admin-password}' | base64 -d"
    )


# --- up -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseResult:
    name: str
    seconds: float
    detail: str


def phases(
    run: Runner, first_train: Callable[[], str], root: Path = REPO_ROOT, kfp_timeout: float = 1200,
    rollout_timeout: float = 600,
) -> list[tuple[str, Callable[[], str]]]:  # fmt: skip
    """The phases of ``up``, in order; each returns a one-line account of what it did."""
    before = [d for d in DEPLOYMENTS if d not in AFTER_FIRST_RUN]
    return [
        ("create cluster", lambda: create_cluster(run, root)),
        ("build image", lambda: build_image(run, root)),
        ("load image", lambda: load_image(run)),
        ("install Kubeflow Pipelines", lambda: install_kfp(run, root, kfp_timeout)),
        ("Grafana admin secret", lambda: ensure_grafana_secret(run)),
        ("apply manifests", lambda: apply_overlay(run, root)),
        ("wait for rollouts", lambda: wait_rollouts(run, before, rollout_timeout)),
        ("first train-and-register", first_train),
        ("serving rollout", lambda: wait_rollouts(run, AFTER_FIRST_RUN, rollout_timeout)),
    ]


def up(
    run: Runner,
    first_train: Callable[[], str],
    on_phase: Callable[[str, str, float, str], None] = lambda name, state, seconds, detail: None,
    root: Path = REPO_ROOT,
    clock: Callable[[], float] = time.monotonic,
    report: Preflight | None = None,
    **timeouts: float,
) -> list[PhaseResult]:
    """Preflight (unless ``report`` is one already made), then every phase in order.

    ``on_phase(name, state, seconds, detail)``: state "warning" (preflight), "running", "done".
    """
    if report is None:
        report = preflight(run)
        for warning in report.warnings:
            on_phase("preflight", "warning", 0.0, warning)
    if not report.ok:
        raise KindStackError(report.message())
    results = []
    for name, phase in phases(run, first_train, root, **timeouts):
        on_phase(name, "running", 0.0, "")
        started = clock()
        detail = phase()
        results.append(PhaseResult(name, round(clock() - started, 1), detail))
        on_phase(name, "done", results[-1].seconds, detail)
    return results


# --- status ---------------------------------------------------------------------------------


def deployment_rows(deployments: Iterable) -> list[dict]:
    """``V1Deployment`` objects as rows: ready/desired replicas and whether that is all of them."""
    rows = []
    for d in deployments:
        desired = d.spec.replicas if d.spec.replicas is not None else 1
        status = d.status
        ready = (status.ready_replicas or 0) if status else 0
        updated = (status.updated_replicas or 0) if status else 0
        rows.append(
            {
                "name": d.metadata.name,
                "ready": ready,
                "desired": desired,
                "updated": updated,
                "healthy": ready >= desired and updated >= desired,
            }
        )
    return sorted(rows, key=lambda r: r["name"])


def pod_rows(pods: Iterable) -> list[dict]:
    """``V1Pod`` objects as rows: phase, restarts, and why a container waits (CrashLoopBackOff...)."""
    rows = []
    for pod in pods:
        statuses = (pod.status.container_statuses or []) if pod.status else []
        waiting = [s.state.waiting.reason for s in statuses if s.state and s.state.waiting]
        rows.append(
            {
                "name": pod.metadata.name,
                "phase": pod.status.phase if pod.status else "Unknown",
                "restarts": sum(s.restart_count or 0 for s in statuses),
                "ready": bool(statuses) and all(s.ready for s in statuses),
                "waiting": ", ".join(r for r in waiting if r),
            }
        )
    return sorted(rows, key=lambda r: r["name"])


def pvc_rows(pvcs: Iterable) -> list[dict]:
    rows = []
    for pvc in pvcs:
        capacity = (pvc.status.capacity or {}).get("storage") if pvc.status else None
        phase = pvc.status.phase if pvc.status else "Unknown"
        rows.append(
            {"name": pvc.metadata.name, "phase": phase, "capacity": capacity, "bound": phase == "Bound"}
        )
    return sorted(rows, key=lambda r: r["name"])


def summarize(
    deployments: Iterable, pods: Iterable, pvcs: Iterable, kfp_deployments: Iterable = (),
    expected: Sequence[str] = DEPLOYMENTS,
) -> dict:  # fmt: skip
    """The cluster at a glance, and every problem in words; ``healthy`` only when there are none."""
    deps, pod_list, claims = deployment_rows(deployments), pod_rows(pods), pvc_rows(pvcs)
    kfp = deployment_rows(kfp_deployments)
    problems = [f"deployment {name} is missing" for name in expected if name not in {d["name"] for d in deps}]
    problems += [
        f"deployment {d['name']}: {d['ready']}/{d['desired']} ready" for d in deps if not d["healthy"]
    ]
    problems += [f"PVC {c['name']} is {c['phase']}" for c in claims if not c["bound"]]
    problems += [f"pod {p['name']}: {p['waiting']}" for p in pod_list if "CrashLoopBackOff" in p["waiting"]]
    not_ready = [d["name"] for d in kfp if not d["healthy"]]
    if not_ready:
        problems.append(f"Kubeflow Pipelines not ready: {', '.join(not_ready)}")
    return {
        "deployments": deps,
        "restarting": [p for p in pod_list if p["restarts"] > 0 or p["waiting"]],
        "pods": pod_list,
        "pvcs": claims,
        "kfp": {"ready": len(kfp) - len(not_ready), "total": len(kfp), "not_ready": not_ready},
        "problems": problems,
        "healthy": not problems,
    }


def cluster_status(
    context: str = CONTEXT, namespace: str = NAMESPACE, timeout: float = 10, config_file: str | None = None
) -> dict:
    """Read deployments, pods and PVCs (and KFP's deployments) with the kubernetes client."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    config_file = config_file or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        api = config.new_client_from_config(config_file=config_file, context=context)
    except (ConfigException, FileNotFoundError, OSError) as exc:
        raise KindStackError(
            f"no kubeconfig context {context} ({exc}); the cluster is not up: `make up` (or `sandbox up --kind`)"
        ) from exc
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    try:
        return summarize(
            apps.list_namespaced_deployment(namespace, _request_timeout=timeout).items,
            core.list_namespaced_pod(namespace, _request_timeout=timeout).items,
            core.list_namespaced_persistent_volume_claim(namespace, _request_timeout=timeout).items,
            apps.list_namespaced_deployment(KFP_NAMESPACE, _request_timeout=timeout).items,
        )
    except client.exceptions.ApiException as exc:
        raise KindStackError(f"the Kubernetes API refused: {exc.status} {exc.reason}") from exc
    except Exception as exc:  # urllib3 connection errors: the node container is stopped, Docker is off
        raise KindStackError(
            f"the cluster's API server does not answer ({type(exc).__name__}); is Docker running? "
            f"`kind get clusters` lists {CLUSTER}? `make down && make up` starts afresh"
        ) from exc


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m sandbox.kind_stack preflight``: what ``make up`` checks before anything else."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv != ["preflight"]:
        print("usage: python3 -m sandbox.kind_stack preflight", file=sys.stderr)
        return 2
    report = preflight()
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not report.ok:
        print(f"error: {report.message()}", file=sys.stderr)
        return 1
    print("preflight ok: docker, kind, kubectl", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
