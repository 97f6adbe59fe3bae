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
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.names import CLUSTER, CONTEXT, IMAGE, KFP_NAMESPACE, NAMESPACE, REPO_ROOT  # noqa: F401 (API)

KIND_CONFIG = "kind-config.yaml"
OVERLAY = "manifests/overlays/kind"
KFP_DIR = "manifests/kfp"
# Upstream installs KFP's cluster-scoped resources (CRDs) first, then the rest once the CRDs exist.
# Its docs wait for crd/applications.app.k8s.io; every CRD is waited for here, which holds whether
# or not a release still ships that one.
KFP_CLUSTER_SCOPED_DIRS = ("manifests/kfp/cluster-scoped", "manifests/kfp/cluster-scoped-resources")
KFP_REPO = "https://github.com/kubeflow/pipelines"
DEPLOYMENTS = ("mlflow", "serving", "monitor", "retrainer", "prometheus", "alertmanager", "grafana")
# The Deployments that run the project image: restarted when a rebuilt image replaces it (same tag).
PROJECT_DEPLOYMENTS = ("mlflow", "serving", "monitor", "retrainer")
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
MIN_DOCKER_CPUS = 4
# The node image, KFP's images and the project image (in Docker and again in the node): docs/kind.md.
MIN_FREE_DISK = 20 * 2**30
# kind's own advice (docs "Known issues: pod errors due to too many open files").
INOTIFY_MINIMUMS = {"max_user_watches": 524288, "max_user_instances": 512}
# The kind release that kind-config.yaml's node image (pinned by digest) was built for; older releases
# are refused, newer ones run it best-effort (kind's node-image policy). CI installs the same release.
KIND_RELEASE = (0, 33, 0)
INSTALL_HINTS = {
    "docker": "install Docker Desktop (macOS, Windows) or Docker Engine (Linux: https://docs.docker.com/engine/install/)",
    "kind": "install kind: `brew install kind`, or `go install sigs.k8s.io/kind@latest`, "
    "or a release binary (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)",
    "kubectl": "install kubectl: `brew install kubectl`, or https://kubernetes.io/docs/tasks/tools/",
    "git": "install git (`brew install git`, `sudo apt-get install git`): kustomize fetches KFP's manifests with it",
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

OK, WARNING, FAIL, SKIP = "ok", "warning", "fail", "skip"


@dataclass(frozen=True)
class Check:
    """One line of ``sandbox doctor``: what was checked, what was found, and the fix when it is not ok."""

    name: str
    state: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.detail}: {self.fix}" if self.fix else self.detail


@dataclass
class Preflight:
    checks: list[Check] = field(default_factory=list)
    docker: dict = field(default_factory=dict)  # `docker info` as JSON, once Docker answered

    def add(self, name: str, state: str, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, state, detail, fix))

    @property
    def problems(self) -> list[str]:
        return [c.line() for c in self.checks if c.state == FAIL]

    @property
    def warnings(self) -> list[str]:
        return [c.line() for c in self.checks if c.state == WARNING]

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self) -> str:
        return "\n".join(
            ["`sandbox up --kind` cannot start:", *(f"  - {p}" for p in self.problems), NO_DOCKER]
        )

    def as_dict(self) -> dict:
        return {"ok": self.ok, "checks": [c.__dict__ for c in self.checks]}


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def disk_free(path: str) -> int | None:
    """Free bytes on the filesystem of ``path``; None when it is not on this machine (Docker Desktop's VM)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def version_tuple(text: str) -> tuple[int, ...] | None:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g or 0) for g in match.groups()) if match else None


def kind_config_host_ports(root: Path = REPO_ROOT) -> list[int]:
    """The host ports kind-config.yaml maps (what `kind create cluster` binds), without a YAML parser."""
    text = (root / KIND_CONFIG).read_text()
    return [int(port) for port in re.findall(r"hostPort:\s*(\d+)", text)]


def kfp_ref(root: Path = REPO_ROOT) -> str:
    """The Kubeflow Pipelines release tag that manifests/kfp pins (``?ref=`` of its remote base)."""
    (ref,) = set(re.findall(r"\?ref=([\w.\-]+)", (root / KFP_DIR / "kustomization.yaml").read_text()))
    return ref


def release_tags(ls_remote: str) -> list[str]:
    """Backend release tags (``X.Y.Z``, not ``sdk-...``) in ``git ls-remote --tags`` output, oldest first."""
    tags = {line.rsplit("refs/tags/", 1)[-1] for line in ls_remote.splitlines() if "refs/tags/" in line}
    plain = [t.removesuffix("^{}") for t in tags if re.fullmatch(r"\d+\.\d+\.\d+(\^\{\})?", t)]
    return sorted(set(plain), key=lambda t: tuple(map(int, t.split("."))))


def check_kfp_ref(run: Runner, report: Preflight, ref: str) -> None:
    """The pinned KFP tag exists upstream: `make up` fails here in seconds, not at `kubectl apply -k`."""
    listed = run(["git", "ls-remote", "--tags", "--refs", KFP_REPO], timeout=30)
    if listed.returncode != 0:
        report.add(
            "KFP manifests",
            FAIL,
            f"cannot list the tags of {KFP_REPO} (`git ls-remote`: {tail(listed.stderr, 2) or 'no answer'})",
            "`make up` fetches Kubeflow Pipelines' manifests from GitHub: check the network or proxy "
            "(git honours HTTPS_PROXY)",
        )
        return
    tags = release_tags(listed.stdout)
    if ref in tags:
        report.add("KFP manifests", OK, f"Kubeflow Pipelines {ref} exists upstream")
        return
    report.add(
        "KFP manifests",
        FAIL,
        f"Kubeflow Pipelines has no release tag {ref} (newest: {', '.join(tags[-5:]) or 'none found'})",
        f"set `?ref=` in {KFP_DIR}/kustomization.yaml and {KFP_DIR}/cluster-scoped/kustomization.yaml "
        "to one of those (same minor as the kfp SDK), and the version in docs/kind.md",
    )


def check_docker(run: Runner, report: Preflight, min_memory: int, machine: str) -> bool:
    """The daemon answers; its memory, CPUs and architecture suit the stack. True when it answered."""
    info = run(["docker", "info", "--format", "{{json .}}"], timeout=20)
    if info.returncode != 0:
        report.add(
            "docker daemon",
            FAIL,
            f"the Docker daemon is not reachable (`docker info`: {tail(info.stderr, 2) or 'no answer'})",
            "start Docker Desktop, or on Linux `sudo systemctl start docker` (and be in the `docker` group)",
        )
        return False
    try:
        report.docker = json.loads(info.stdout.strip() or "{}")
    except ValueError:
        report.docker = {}
    docker = report.docker
    report.add(
        "docker daemon",
        OK,
        f"Docker {docker.get('ServerVersion', '?')} ({docker.get('OperatingSystem', '?')})",
    )
    memory, cpus = int(docker.get("MemTotal") or 0), int(docker.get("NCPU") or 0)
    if 0 < memory < min_memory:
        report.add(
            "docker memory",
            WARNING,
            f"Docker has {memory / 2**30:.1f} GiB of memory; the full stack (KFP included) wants 8 GB",
            "raise it (Docker Desktop: Settings > Resources > Memory) or expect evictions",
        )
    elif memory:
        report.add("docker memory", OK, f"{memory / 2**30:.1f} GiB")
    if 0 < cpus < MIN_DOCKER_CPUS:
        report.add(
            "docker CPUs",
            WARNING,
            f"Docker has {cpus} CPU(s); the stack requests 2.3 cores and the image build wants more",
            f"give Docker {MIN_DOCKER_CPUS} or more (Docker Desktop: Settings > Resources > CPU limit), "
            "or expect a slow first run",
        )
    elif cpus:
        report.add("docker CPUs", OK, f"{cpus}")
    arch = docker_arch(docker.get("Architecture") or machine)
    if arch != "amd64":
        report.add(
            "architecture",
            FAIL,
            f"Docker runs {arch} containers, and the cluster path needs amd64: Kubeflow Pipelines publishes "
            "its backend images for amd64 only, and its ML Metadata server does not start even under "
            "emulation (kubeflow/pipelines #10308, #10309)",
            "`make demo` runs the whole platform natively on this machine (the same pipeline, registry, "
            "serving, monitor and alerts); for the cluster, use an amd64 machine",
        )
    else:
        report.add("architecture", OK, arch)
    return True


def docker_arch(name: str) -> str:
    """Docker's and the kernel's names of an architecture as an OCI platform name."""
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(name.lower(), name.lower())


def check_kind_version(run: Runner, report: Preflight) -> None:
    found = run(["kind", "version"], timeout=20)
    version = version_tuple(found.stdout) if found.returncode == 0 else None
    wanted = ".".join(map(str, KIND_RELEASE))
    if version is None:
        report.add("kind version", WARNING, f"`kind version` said {tail(found.stdout + found.stderr, 1)!r}")
    elif version < KIND_RELEASE:
        report.add(
            "kind version",
            FAIL,
            f"kind v{'.'.join(map(str, version))} is older than v{wanted}, the release that kind-config.yaml's "
            "node image is built for (older kindnet network-policy agents broke probes under a "
            "default-deny policy: kind #3875)",
            f"upgrade kind: `brew upgrade kind`, `go install sigs.k8s.io/kind@v{wanted}`, or the v{wanted} "
            "binary from https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
        )
    else:
        report.add("kind version", OK, f"kind v{'.'.join(map(str, version))}")


def check_disk(report: Preflight, free: Callable[[str], int | None]) -> None:
    root = report.docker.get("DockerRootDir") or ""
    left = free(root) if root else None
    if left is None:
        report.add(
            "disk",
            SKIP,
            "Docker's disk is not on this filesystem (Docker Desktop keeps it in its VM)",
            f"make sure it has {MIN_FREE_DISK // 2**30} GiB free: Settings > Resources > Disk usage limit",
        )
    elif left < MIN_FREE_DISK:
        report.add(
            "disk",
            WARNING,
            f"{left / 2**30:.1f} GiB free under {root}; the images want about {MIN_FREE_DISK // 2**30} GiB",
            "free some: `docker system prune` (removes stopped containers and unused images)",
        )
    else:
        report.add("disk", OK, f"{left / 2**30:.0f} GiB free under {root}")


def check_inotify(report: Preflight, read: Callable[[str], str | None]) -> None:
    """kind's node runs many watchers; low inotify limits are the most reported KFP-on-kind failure."""
    low = []
    for key, minimum in INOTIFY_MINIMUMS.items():
        value = read(f"/proc/sys/fs/inotify/{key}")
        if value is not None and value.strip().isdigit() and int(value) < minimum:
            low.append(f"fs.inotify.{key}={int(value)}")
    if low:
        wanted = " ".join(f"fs.inotify.{k}={v}" for k, v in INOTIFY_MINIMUMS.items())
        report.add(
            "inotify",
            WARNING,
            f'{", ".join(low)}: pods fail with "too many open files" under kind',
            f"`sudo sysctl {wanted}` (keep it: the same lines in /etc/sysctl.d/99-kind.conf)",
        )
    else:
        report.add("inotify", OK, "limits high enough for kind")


def check_ports(
    report: Preflight, ports: Iterable[int], port_free: Callable[[int], bool], system: str
) -> None:
    taken = [port for port in ports if not port_free(port)]
    if not taken:
        report.add("host ports", OK, "free: " + ", ".join(map(str, ports)))
        return
    fix = "stop what holds them (the embedded stack: `sandbox down`)"
    if system == "darwin" and 5000 in taken:
        # macOS Monterey and later: AirPlay Receiver (ControlCenter) listens on 5000 and 7000.
        fix += (
            "; port 5000 on macOS is AirPlay Receiver's: turn it off in System Settings > General > "
            "AirDrop & Handoff > AirPlay Receiver, or move MLflow's host port: change `hostPort: 5000` "
            "in kind-config.yaml and export SANDBOX_MLFLOW_PORT to the same port"
        )
    report.add(
        "host ports",
        FAIL,
        f"host port(s) {', '.join(map(str, taken))} are taken, and the cluster maps them",
        fix,
    )


def preflight(
    run: Runner = run_command,
    which: Callable[[str], str | None] | None = None,
    port_free: Callable[[int], bool] | None = None,
    min_memory: int = MIN_DOCKER_MEMORY,
    system: str = sys.platform,
    machine: str = platform.machine(),
    read: Callable[[str], str | None] = read_text,
    free: Callable[[str], int | None] = disk_free,
    root: Path = REPO_ROOT,
) -> Preflight:
    """Everything `make up` needs, checked in seconds: tools, Docker, kind, host limits, ports, the KFP tag."""
    which = which or shutil.which
    port_free = port_free or port_is_free
    report = Preflight()
    missing = set()
    for tool in ("docker", "kind", "kubectl", "git"):
        path = which(tool)
        if path is None:
            missing.add(tool)
            report.add(tool, FAIL, f"{tool} is not installed", INSTALL_HINTS[tool])
        else:
            report.add(tool, OK, path)
    docker_ok = "docker" not in missing and check_docker(run, report, min_memory, machine)
    if "kind" not in missing:
        check_kind_version(run, report)
    if docker_ok:
        check_disk(report, free)
        # Docker Desktop runs kind in its own VM, where these host limits do not apply.
        if system == "linux" and report.docker.get("OperatingSystem") != "Docker Desktop":
            check_inotify(report, read)
    if docker_ok and "kind" not in missing:
        if cluster_exists(run):
            report.add("host ports", SKIP, f"cluster {CLUSTER} exists and holds them")
        else:
            check_ports(report, kind_config_host_ports(root), port_free, system)
    if "git" not in missing:
        check_kfp_ref(run, report, kfp_ref(root))
    return report


def doctor_lines(report: Preflight) -> list[str]:
    """The report as text: one line a check, the fix indented under what is not ok."""
    lines = []
    for c in report.checks:
        lines.append(f"{c.state:<8} {c.name:<14} {c.detail}")
        if c.fix and c.state != OK:
            lines.append(f"{'':<8} {'':<14} fix: {c.fix}")
    lines.append("ready for `make up`" if report.ok else "not ready: fix what says `fail` first")
    return lines


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


def uses_buildkit(run: Runner) -> bool:
    """`docker build` is BuildKit (buildx) unless DOCKER_BUILDKIT=0 or the CLI has no buildx plugin."""
    if os.environ.get("DOCKER_BUILDKIT") == "0":
        return False
    return run(["docker", "buildx", "version"], timeout=20).returncode == 0


def build_command(image: str, root: Path, buildkit: bool, base_image: str = "") -> list[str]:
    command = ["docker", "build", "-t", image]
    if buildkit:
        # No attestation manifests: `docker save` leaves their content out of the archive with
        # Docker's containerd image store, and the node's import fails (kind #3795). The legacy
        # builder makes none and does not know these flags.
        command += ["--provenance=false", "--sbom=false"]
    if base_image:
        command += ["--build-arg", f"BASE_IMAGE={base_image}"]
    return [*command, str(root)]


def build_image(run: Runner, root: Path = REPO_ROOT, image: str = IMAGE) -> str:
    """Build the one project image (Docker's layer cache makes a rebuild of unchanged code quick)."""
    command = build_command(image, root, uses_buildkit(run), os.environ.get("SANDBOX_BASE_IMAGE", ""))
    check(run, "build image", command, timeout=1800)
    return f"built {image}"


def image_id(run: Runner, image: str = IMAGE) -> str:
    inspect = ["docker", "image", "inspect", "--format", "{{.Id}}", image]
    return check(run, "inspect image", inspect, timeout=60).stdout.strip()


def save_command(image: str, archive: Path, api_version: str, arch: str) -> list[str]:
    command = ["docker", "save", "-o", str(archive)]
    if (version_tuple(api_version) or (0,)) >= (1, 48):
        # One platform only (`--platform` needs API 1.48, Docker 28): the archive then holds exactly
        # what the node imports, whatever else the image index lists (kind #3795, kind PR #4247).
        command += ["--platform", f"linux/{arch}"]
    return [*command, image]


def load_image(run: Runner, state_dir: Path, image: str = IMAGE, arch: str = "amd64") -> str:
    """`docker save` + `kind load image-archive`: `kind load docker-image` fails with Docker's containerd
    image store (the default of Docker Desktop 4.34+ and Engine 29+; kind #3795, #4236)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    archive = state_dir / "image.tar"
    api = run(["docker", "version", "--format", "{{.Server.APIVersion}}"], timeout=20)
    api_version = api.stdout.strip() if api.returncode == 0 else ""
    try:
        check(run, "save image", save_command(image, archive, api_version, arch), timeout=600)
        check(
            run,
            "load image",
            ["kind", "load", "image-archive", str(archive), "--name", CLUSTER],
            hint="Docker's disk may be full: `docker system df`; see docs/kind.md",
            timeout=900,
        )
    finally:
        archive.unlink(missing_ok=True)
    return f"{image} loaded into the cluster's node"


def image_changed(cluster_kept: bool, recorded: str | None, loaded: str) -> bool:
    """Restart the project's pods when the image under the same tag changed in a cluster that kept them.

    The tag never changes (the pipeline's IR names it too), so a rebuilt image would not reach running
    pods. A new cluster has no old pods; a kept one with no record (state removed) is restarted to be sure.
    """
    return cluster_kept and recorded != loaded


def restart_deployments(run: Runner, names: Sequence[str] = PROJECT_DEPLOYMENTS) -> str:
    check(
        run,
        "restart on the new image",
        kubectl("rollout", "restart", *(f"deployment/{n}" for n in names), "-n", NAMESPACE),
        timeout=120,
    )
    return f"new image: restarted {', '.join(names)}"


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
    with_events(
        run,
        KFP_NAMESPACE,
        lambda: check(
            run,
            "wait for KFP",
            kubectl(
                "wait", "--for=condition=available", "deployment", "--all", "-n", KFP_NAMESPACE,
                f"--timeout={int(timeout)}s",
            ),
            hint=f"see `kubectl --context {CONTEXT} get pods -n {KFP_NAMESPACE}`; KFP's images are large, "
            "a slow first pull can take longer (run `make up` again: it continues)",
            timeout=timeout + 60,
        ),
    )  # fmt: skip
    return f"Kubeflow Pipelines available in namespace {KFP_NAMESPACE}"


def events_tail(run: Runner, namespace: str, lines: int = 15) -> str:
    """The namespace's latest events: why a pod does not start (pull errors, OOM, failed probes)."""
    events = run(kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp"), timeout=30)
    return tail(events.stdout, lines) if events.returncode == 0 else ""


def with_events(run: Runner, namespace: str, step: Callable[[], object]) -> None:
    """Run ``step``; if it fails, add the namespace's latest events to the error."""
    try:
        step()
    except KindStackError as exc:
        events = events_tail(run, namespace)
        raise KindStackError(
            f"{exc}" + (f"\nlatest events in {namespace}:\n{events}" if events else "")
        ) from exc


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    """GET without proxies (every URL here is 127.0.0.1): status and body, 0 and the reason if none."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(getattr(exc, "reason", exc))


def kfp_api_health(host: str, fetch: Callable[[str], tuple[int, str]] | None = None) -> tuple[bool, str]:
    """Whether the KFP API answers behind ``host``, and what was seen.

    Through the UI (host port 8080), ``/apis/v2beta1/healthz`` is the UI server's own handler: it
    answers 200 even while the API server is down, with ``apiServerReady: false``
    (kubeflow/pipelines frontend/server/handlers/healthz.ts). That field decides; the API server's
    own endpoint has no such field, and there its 200 does.
    """
    status, body = (fetch or http_get)(f"{host.rstrip('/')}/apis/v2beta1/healthz")
    if status == 0:
        return False, f"the Kubeflow Pipelines API does not answer at {host} ({body})"
    if status != 200:
        return False, f"the Kubeflow Pipelines API at {host} answers HTTP {status}"
    try:
        health = json.loads(body)
    except ValueError:
        return False, f"{host}/apis/v2beta1/healthz is not KFP's health answer (not JSON)"
    if health.get("apiServerReady") is False:
        return False, (
            f"the KFP UI answers at {host}, its API server does not (apiServerReady: false); "
            f"see `kubectl --context {CONTEXT} -n {KFP_NAMESPACE} get pods -l app=ml-pipeline`"
        )
    tag = health.get("apiServerTagName") or health.get("tag_name") or "unknown"
    return True, f"Kubeflow Pipelines API ready (backend {tag})"


def wait_kfp_api(
    host: str,
    timeout: float = 300,
    fetch: Callable[[str], tuple[int, str]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    deadline = clock() + timeout
    while True:
        ready, detail = kfp_api_health(host, fetch)
        if ready:
            return detail
        if clock() >= deadline:
            raise KindStackError(
                f"KFP API not ready after {timeout:.0f}s: {detail}; run `make up` again (it continues)"
            )
        sleep(3)


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
        with_events(
            run,
            NAMESPACE,
            lambda name=name: check(
                run,
                f"rollout of {name}",
                kubectl(
                    "rollout", "status", f"deployment/{name}", "-n", NAMESPACE, f"--timeout={int(timeout)}s"
                ),
                hint=f"see `kubectl --context {CONTEXT} -n {NAMESPACE} describe deployment {name}` and its pods' logs",
                timeout=timeout + 60,
            ),
        )
    return f"ready: {', '.join(names)}"


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


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class PhaseLog:
    """A runner that also writes each command, its exit code and output to the running phase's log,
    ``<logs_dir>/kind-<phase>.log`` (rewritten by each ``up``). Inputs (the Grafana secret) are not written."""

    def __init__(self, run: Runner, logs_dir: Path | None):
        self.run, self.logs_dir, self.path = run, logs_dir, None

    def start(self, phase: str) -> Path | None:
        if self.logs_dir is None:
            return None
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.logs_dir / f"kind-{slug(phase)}.log"
        self.path.write_text(f"# {phase}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        return self.path

    def note(self, text: str) -> None:
        if self.path is not None:
            with self.path.open("a") as log:
                log.write(text.rstrip() + "\n")

    def __call__(self, args: Sequence[str], *, input: str | None = None, timeout: float | None = None):
        result = self.run(args, input=input, timeout=timeout)
        self.note(f"$ {' '.join(args)}\n[exit {result.returncode}]\n{result.stdout}{result.stderr}")
        return result


LOADED_IMAGE_RECORD = "loaded-image-id"


def phases(
    run: Runner,
    first_train: Callable[[], str],
    state_dir: Path,
    root: Path = REPO_ROOT,
    kfp_timeout: float = 1200,
    rollout_timeout: float = 600,
    arch: str = "amd64",
    kfp_host: str = URLS["Kubeflow Pipelines"],
    fetch: Callable[[str], tuple[int, str]] | None = None,
) -> list[tuple[str, Callable[[], str]]]:
    """The phases of ``up``, in order; each returns a one-line account of what it did."""
    before = [d for d in DEPLOYMENTS if d not in AFTER_FIRST_RUN]
    record = state_dir / LOADED_IMAGE_RECORD
    seen: dict[str, bool] = {}

    def create() -> str:
        detail = create_cluster(run, root)
        seen["kept"] = detail.endswith("kept")
        return detail

    def load() -> str:
        loaded = image_id(run)
        recorded = record.read_text().strip() if record.is_file() else None
        detail = load_image(run, state_dir, arch=arch)
        seen["restart"] = image_changed(seen.get("kept", False), recorded, loaded)
        record.write_text(loaded)
        return f"{detail} ({loaded[:19]})"

    def restart() -> str:
        if not seen.get("kept"):
            return "new cluster: nothing to restart"
        if not seen.get("restart"):
            return "image unchanged: pods kept"
        return restart_deployments(run)

    return [
        ("create cluster", create),
        ("build image", lambda: build_image(run, root)),
        ("load image", load),
        ("install Kubeflow Pipelines", lambda: install_kfp(run, root, kfp_timeout)),
        ("Grafana admin secret", lambda: ensure_grafana_secret(run)),
        ("apply manifests", lambda: apply_overlay(run, root)),
        ("restart on new image", restart),
        ("wait for rollouts", lambda: wait_rollouts(run, before, rollout_timeout)),
        ("KFP API", lambda: wait_kfp_api(kfp_host, fetch=fetch)),
        ("first train-and-register", first_train),
        ("serving rollout", lambda: wait_rollouts(run, AFTER_FIRST_RUN, rollout_timeout)),
    ]


def up(
    run: Runner,
    first_train: Callable[[], str],
    state_dir: Path,
    on_phase: Callable[[str, str, float, str], None] = lambda name, state, seconds, detail: None,
    root: Path = REPO_ROOT,
    clock: Callable[[], float] = time.monotonic,
    report: Preflight | None = None,
    logs_dir: Path | None = None,
    **options,
) -> list[PhaseResult]:
    """Preflight (unless ``report`` is one already made), then every phase in order.

    ``on_phase(name, state, seconds, detail)``: state "warning" (preflight), "running", "done".
    Each phase's commands and output go to ``logs_dir/kind-<phase>.log``; a failure names that file.
    """
    if report is None:
        report = preflight(run, root=root)
        for warning in report.warnings:
            on_phase("preflight", "warning", 0.0, warning)
    if not report.ok:
        raise KindStackError(report.message())
    arch = docker_arch(report.docker.get("Architecture") or platform.machine())
    logged = PhaseLog(run, logs_dir)
    results = []
    for name, phase in phases(logged, first_train, state_dir, root, arch=arch, **options):
        on_phase(name, "running", 0.0, "")
        log = logged.start(name)
        started = clock()
        try:
            detail = phase()
        except Exception as exc:
            logged.note(f"FAILED: {exc}")
            if log is None or not isinstance(exc, KindStackError):
                raise
            raise KindStackError(f"{exc}\nfull log: {log}") from exc
        logged.note(f"done: {detail}")
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
    """``python3 -m sandbox.kind_stack doctor [--json]``: what ``make up`` checks first, before any venv."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("doctor", "preflight") or set(argv[1:]) - {"--json"} or "-h" in argv:
        print("usage: python3 -m sandbox.kind_stack doctor [--json]  (preflight: the same)", file=sys.stderr)
        return 2
    report = preflight()
    if "--json" in argv:
        print(json.dumps(report.as_dict()))
    else:
        print("\n".join(doctor_lines(report)), file=sys.stderr)
        if not report.ok:
            print(NO_DOCKER, file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
