"""The kind stack without a cluster: a fake command runner plays Docker, kind and kubectl.

What is checked: the preflight's verdicts and messages, the order of the phases and their
commands, idempotency of a second ``up``, failures that name the step and its stderr, and the
status summary over real kubernetes client model objects.
"""

import json
import subprocess
import sys
import time

import pytest
from kubernetes.client import (
    V1ContainerState,
    V1ContainerStateWaiting,
    V1ContainerStatus,
    V1Deployment,
    V1DeploymentSpec,
    V1DeploymentStatus,
    V1LabelSelector,
    V1ObjectMeta,
    V1PersistentVolumeClaim,
    V1PersistentVolumeClaimStatus,
    V1Pod,
    V1PodStatus,
    V1PodTemplateSpec,
)

from sandbox import kind_stack as ks
from sandbox.names import REPO_ROOT
from sandbox.settings import Settings
from tests.support.processes import free_port

GiB = 2**30


# What `git ls-remote --tags --refs https://github.com/kubeflow/pipelines` lists (a part of it).
KFP_TAGS = "\n".join(
    f"{i:040x}\trefs/tags/{tag}"
    for i, tag in enumerate(["2.16.0", "2.16.1", "2.17.0", "sdk-2.17.0-1", "2.5.0", "master-55ec846"])
)


class FakeDocker:
    """Docker, kind, kubectl and git as far as ``up`` can tell: records every call, keeps a little state."""

    def __init__(
        self,
        cluster=False,
        secret=False,
        memory=16 * GiB,
        daemon=True,
        fail=None,
        cpus=8,
        arch="x86_64",
        kind="v0.33.0",
        tags=KFP_TAGS,
        api="1.51",
        image_id="sha256:" + "a" * 64,
        os_name="Ubuntu 24.04.2 LTS",
    ):
        self.cluster, self.secret, self.memory, self.daemon = cluster, secret, memory, daemon
        self.cpus, self.arch, self.kind, self.tags, self.api = cpus, arch, kind, tags, api
        self.image_id, self.os_name = image_id, os_name
        self.fail = fail or {}  # command substring -> (returncode, stderr)
        self.calls: list[list[str]] = []
        self.inputs: list[str | None] = []

    def __call__(self, args, *, input=None, timeout=None):
        args = list(args)
        self.calls.append(args)
        self.inputs.append(input)
        line = " ".join(args)
        for needle, (code, stderr) in self.fail.items():
            if needle in line:
                return ks.CommandResult(code, "", stderr)
        if args[:2] == ["docker", "info"]:
            if not self.daemon:
                return ks.CommandResult(
                    1, "", "Cannot connect to the Docker daemon at unix:///var/run/docker.sock"
                )
            info = {
                "MemTotal": self.memory,
                "NCPU": self.cpus,
                "Architecture": self.arch,
                "ServerVersion": "29.1.3",
                "OperatingSystem": self.os_name,
                "DockerRootDir": "/var/lib/docker",
            }
            return ks.CommandResult(0, json.dumps(info) + "\n")
        if args[:2] == ["kind", "version"]:
            return ks.CommandResult(0, f"kind {self.kind} go1.25.1 linux/amd64\n")
        if args[:2] == ["git", "ls-remote"]:
            return ks.CommandResult(0, self.tags + "\n")
        if args[:2] == ["docker", "version"]:
            return ks.CommandResult(0, f"{self.api}\n")
        if args[:3] == ["docker", "image", "inspect"]:
            return ks.CommandResult(0, f"{self.image_id}\n")
        if args[:3] == ["kind", "get", "clusters"]:
            return ks.CommandResult(0, "other\nmlops-sandbox\n" if self.cluster else "other\n")
        if args[:3] == ["kind", "create", "cluster"]:
            self.cluster = True
        if "secret" in args and "get" in args and not self.secret:
            return ks.CommandResult(1, "", 'Error from server (NotFound): secrets "grafana-admin" not found')
        if input and json.loads(input)["kind"] == "Secret":
            self.secret = True
        return ks.CommandResult(0, "ok\n")

    def lines(self) -> list[str]:
        return [" ".join(c) for c in self.calls]


def all_present(tool):
    return f"/usr/bin/{tool}"


def free(port):
    return True


def roomy_host(path):
    """/proc/sys/fs/inotify/* of a host that followed kind's advice."""
    return {"max_user_watches": "524288\n", "max_user_instances": "512\n"}.get(path.rsplit("/", 1)[-1])


REAL_PREFLIGHT = ks.preflight  # the fixture below replaces ks.preflight


def pf(runner, **changes):
    """``preflight`` on a ready Linux laptop (tools, limits, disk, ports), but for ``changes``."""
    host = {
        "which": all_present,
        "port_free": free,
        "system": "linux",
        "machine": "x86_64",
        "read": roomy_host,
        "free": lambda path: 100 * GiB,
    }
    return REAL_PREFLIGHT(runner, **{**host, **changes})


def state(report):
    return {c.name: c.state for c in report.checks}


KFP_READY = (200, json.dumps({"apiServerReady": True, "apiServerTagName": "2.17.0"}))


@pytest.fixture
def tools(monkeypatch):
    """Every tool present, every port free, KFP's API ready (what ``up`` sees on a ready laptop)."""
    monkeypatch.setattr(ks.shutil, "which", all_present)
    monkeypatch.setattr(ks, "port_is_free", free)
    monkeypatch.setattr(ks, "preflight", lambda run, **kw: pf(run))
    monkeypatch.setattr(ks, "http_get", lambda url, timeout=5: KFP_READY)


# --- preflight ------------------------------------------------------------------------------


def test_preflight_names_every_missing_tool_with_a_hint_and_points_to_make_demo():
    runner = FakeDocker()
    report = pf(runner, which=lambda tool: None)
    assert not report.ok
    assert [p.split(" ")[0] for p in report.problems] == ["docker", "kind", "kubectl", "git"]
    assert "docs.docker.com" in report.problems[0] and "kind.sigs.k8s.io" in report.problems[1]
    assert "kubernetes.io/docs/tasks/tools" in report.problems[2]
    assert "kustomize fetches KFP's manifests" in report.problems[3]
    assert "make demo" in report.message()
    assert runner.calls == [], "nothing to ask Docker when it is not installed"


def test_preflight_says_the_docker_daemon_is_down_with_its_own_words():
    report = pf(FakeDocker(daemon=False))
    assert len(report.problems) == 1
    assert "Docker daemon is not reachable" in report.problems[0]
    assert "Cannot connect to the Docker daemon" in report.problems[0]
    assert "systemctl start docker" in report.problems[0]


def test_preflight_warns_under_8_gb_of_docker_memory_but_goes_on():
    small = pf(FakeDocker(memory=4 * GiB))
    assert small.ok and len(small.warnings) == 1 and "4.0 GiB" in small.warnings[0]
    # Docker Desktop set to 8 GB reports a little under 8 GiB: no warning for that.
    desktop_8gb = pf(FakeDocker(memory=int(7.7 * GiB)))
    assert desktop_8gb.ok and desktop_8gb.warnings == []


def test_preflight_names_taken_host_ports_only_before_the_cluster_exists():
    taken = {5000, 9090}
    fresh = pf(FakeDocker(), port_free=lambda port: port not in taken)
    assert not fresh.ok and "5000, 9090" in fresh.problems[0] and "sandbox down" in fresh.problems[0]
    assert "AirPlay" not in fresh.problems[0], "AirPlay Receiver is macOS only"
    # An existing cluster holds those ports itself.
    again = pf(FakeDocker(cluster=True), port_free=lambda port: port not in taken)
    assert again.ok and state(again)["host ports"] == ks.SKIP


def test_preflight_module_fails_within_seconds_on_a_machine_without_docker(tmp_path):
    """What `make up` runs first, with the system python and an empty PATH: no venv, no Docker."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sandbox.kind_stack", "doctor"],
        cwd=REPO_ROOT,
        env={"PATH": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < 10
    assert done.returncode == 1
    for needle in (
        "docker is not installed",
        "kind is not installed",
        "kubectl is not installed",
        "git is not installed",
        "make demo",
    ):
        assert needle in done.stderr
    assert "Traceback" not in done.stderr


def test_the_module_imports_only_the_standard_library():
    code = (
        "import sys, sandbox.kind_stack; "
        "print(sorted(m for m in ('kubernetes', 'kfp', 'typer', 'rich', 'pydantic') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stderr


# --- up -------------------------------------------------------------------------------------


def test_up_on_a_fresh_machine_runs_every_phase_in_order(tools, tmp_path):
    runner = FakeDocker()
    trained = []
    events = []
    results = ks.up(
        runner,
        first_train=lambda: trained.append(len(runner.calls)) or "v1 champion",
        state_dir=tmp_path,
        on_phase=lambda name, state, seconds, detail: events.append((name, state)),
    )
    assert [r.name for r in results] == [
        "create cluster",
        "build image",
        "load image",
        "install Kubeflow Pipelines",
        "Grafana admin secret",
        "apply manifests",
        "restart on new image",
        "wait for rollouts",
        "KFP API",
        "first train-and-register",
        "serving rollout",
    ]
    details = {r.name: r.detail for r in results}
    assert details["restart on new image"] == "new cluster: nothing to restart"
    assert details["KFP API"] == "Kubeflow Pipelines API ready (backend 2.17.0)"
    assert not any("rollout restart" in line for line in runner.lines())
    assert events[0] == ("create cluster", "running") and events[-1] == ("serving rollout", "done")
    lines = runner.lines()

    def index(needle):
        return next(i for i, line in enumerate(lines) if needle in line)

    assert index("kind create cluster --name mlops-sandbox --config") < index(
        "docker build -t mlops-sandbox:0.1.0"
    )
    assert f"--config {REPO_ROOT / 'kind-config.yaml'}" in lines[index("kind create cluster")]
    archive = tmp_path / "image.tar"
    assert index("docker build") < index(
        f"docker save -o {archive} --platform linux/amd64 mlops-sandbox:0.1.0"
    )
    assert index("docker save") < index(f"kind load image-archive {archive} --name mlops-sandbox")
    assert not any("kind load docker-image" in line for line in lines), "fails with containerd's image store"
    assert not archive.exists(), "the archive (the size of the image) is removed once loaded"
    assert index("kind load") < index(f"apply -k {REPO_ROOT / 'manifests/kfp'}")
    assert index("apply -k") < index("wait --for=condition=available deployment --all -n kubeflow")
    assert (
        index("-n kubeflow")
        < index("get secret grafana-admin")
        < index("apply -k " + str(REPO_ROOT / ks.OVERLAY))
    )
    rollouts = [line.split("deployment/")[1].split()[0] for line in lines if "rollout status" in line]
    assert rollouts == ["mlflow", "monitor", "retrainer", "prometheus", "alertmanager", "grafana", "serving"]
    # Training starts after the six rollouts and before serving's (serving is ready once a champion exists).
    assert trained == [index("deployment/serving")]
    assert all(c[1:3] == ["--context", "kind-mlops-sandbox"] for c in runner.calls if c[0] == "kubectl")
    assert all(r.seconds >= 0 for r in results)


def test_the_grafana_password_goes_through_stdin_never_the_command_line(tools):
    runner = FakeDocker()
    ks.ensure_grafana_secret(runner, make_password=lambda: "s3cret-pw")
    secret = next(json.loads(i) for i in runner.inputs if i and json.loads(i)["kind"] == "Secret")
    assert secret["metadata"] == {"name": "grafana-admin", "namespace": "mlops"}
    assert secret["stringData"] == {"admin-user": "admin", "admin-password": "s3cret-pw"}
    assert not any("s3cret-pw" in line for line in runner.lines())
    # The namespace is made first, so the Secret can exist before the overlay is applied.
    assert runner.inputs[0] and json.loads(runner.inputs[0]) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "mlops"},
    }


def test_a_random_password_each_time_one_is_made():
    first, second = FakeDocker(), FakeDocker()
    ks.ensure_grafana_secret(first)
    ks.ensure_grafana_secret(second)
    passwords = [
        json.loads(i)["stringData"]["admin-password"]
        for i in first.inputs + second.inputs
        if i and json.loads(i)["kind"] == "Secret"
    ]
    assert len(passwords) == 2 and passwords[0] != passwords[1] and min(map(len, passwords)) >= 24


def test_a_second_up_keeps_the_cluster_and_the_secret(tools, tmp_path):
    runner = FakeDocker(cluster=True, secret=True)
    (tmp_path / ks.LOADED_IMAGE_RECORD).write_text(runner.image_id)  # the same image as last time
    up = ks.up(runner, first_train=lambda: "champion exists; skipped", state_dir=tmp_path)
    results = {r.name: r.detail for r in up}
    lines = runner.lines()
    assert not any(line.startswith("kind create cluster") for line in lines)
    assert any("cluster-info" in line for line in lines), "an existing cluster is checked, not trusted"
    assert not any(i and json.loads(i)["kind"] == "Secret" for i in runner.inputs), "the password is kept"
    assert results["create cluster"] == "cluster mlops-sandbox exists; kept"
    assert results["Grafana admin secret"] == "secret mlops/grafana-admin exists; kept"
    assert results["restart on new image"] == "image unchanged: pods kept"
    assert not any("rollout restart" in line for line in lines)


def test_a_failed_phase_names_the_step_the_command_and_its_stderr_and_stops(tools, tmp_path):
    stderr = "step 3/9 : RUN pip install .\nERROR: failed to solve: network unreachable"
    runner = FakeDocker(fail={"docker build": (1, stderr)})
    trained = []
    with pytest.raises(ks.KindStackError) as info:
        ks.up(runner, first_train=lambda: trained.append(1) or "", state_dir=tmp_path)
    message = str(info.value)
    assert message.startswith("build image failed: `docker build -t mlops-sandbox:0.1.0")
    assert "exited 1" in message and "network unreachable" in message
    assert not any("kind load" in line for line in runner.lines()) and trained == []


def test_up_refuses_before_any_phase_when_preflight_fails(monkeypatch, tmp_path):
    monkeypatch.setattr(ks.shutil, "which", lambda tool: None if tool == "kind" else f"/usr/bin/{tool}")
    runner = FakeDocker()
    with pytest.raises(ks.KindStackError) as info:
        ks.up(runner, first_train=lambda: "", state_dir=tmp_path)
    assert "kind is not installed" in str(info.value) and "make demo" in str(info.value)
    # Only questions were asked: Docker's state and the KFP tag; nothing was created or built.
    assert [c[:2] for c in runner.calls] == [["docker", "info"], ["git", "ls-remote"]]


def test_kfp_cluster_scoped_resources_first_then_their_crd_then_the_rest(tmp_path):
    (tmp_path / "manifests/kfp/cluster-scoped").mkdir(parents=True)
    runner = FakeDocker()
    ks.install_kfp(runner, tmp_path, timeout=900)
    steps = [c[3:] for c in runner.calls]
    assert steps == [
        ["apply", "-k", str(tmp_path / "manifests/kfp/cluster-scoped")],
        ["wait", "--for", "condition=established", "--timeout=120s", "crd", "--all"],
        ["apply", "-k", str(tmp_path / "manifests/kfp")],
        ["wait", "--for=condition=available", "deployment", "--all", "-n", "kubeflow", "--timeout=900s"],
    ]


def test_kfp_in_one_kustomization_is_applied_again_once_its_crds_exist(tmp_path):
    calls = []

    def runner(args, **kwargs):  # the first apply fails: the CRDs are not established yet
        calls.append(args[3:5])
        if args[3] == "apply" and len(calls) == 1:
            return ks.CommandResult(
                1, "", 'no matches for kind "Application": ensure CRDs are installed first'
            )
        return ks.CommandResult(0, "ok")

    ks.install_kfp(runner, tmp_path)
    assert calls == [
        ["apply", "-k"],
        ["wait", "--for"],
        ["apply", "-k"],
        ["wait", "--for=condition=available"],
    ]


def test_a_kfp_wait_timeout_says_where_to_look_and_that_up_continues(tmp_path):
    runner = FakeDocker(fail={"condition=available": (1, "error: timed out waiting for the condition")})
    with pytest.raises(ks.KindStackError) as info:
        ks.install_kfp(runner, tmp_path)
    assert "wait for KFP failed" in str(info.value) and "timed out waiting" in str(info.value)
    assert "get pods -n kubeflow" in str(info.value)


def test_the_real_runner_reports_a_missing_program_and_a_timeout_as_results():
    assert ks.run_command(["no-such-program-here"]).returncode == 127
    slow = ks.run_command([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.5)
    assert slow.returncode == 124 and "timed out" in slow.stderr
    echo = ks.run_command([sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"], input="hi")
    assert echo == ks.CommandResult(0, "HI\n", "")


def test_names_agree_with_the_pipeline_and_the_settings():
    from pipelines.components import PROJECT_IMAGE

    assert ks.IMAGE == PROJECT_IMAGE
    settings = Settings()
    assert (settings.kube_context, settings.kube_namespace) == (ks.CONTEXT, ks.NAMESPACE)
    for port in (settings.mlflow_port, settings.serving_port, settings.monitor_port):
        assert port in ks.HOST_PORTS
    assert {settings.prometheus_port, settings.alertmanager_port, 3001, 8080} <= set(ks.HOST_PORTS)


# --- status ---------------------------------------------------------------------------------


def deployment(name, desired=1, ready=1, updated=None):
    return V1Deployment(
        metadata=V1ObjectMeta(name=name, namespace="mlops"),
        spec=V1DeploymentSpec(
            replicas=desired,
            selector=V1LabelSelector(match_labels={"app": name}),
            template=V1PodTemplateSpec(metadata=V1ObjectMeta(labels={"app": name})),
        ),
        status=V1DeploymentStatus(
            ready_replicas=ready or None, updated_replicas=ready if updated is None else updated
        ),
    )


def pod(name, restarts=0, waiting=None, ready=True, phase="Running"):
    state = (
        V1ContainerState(waiting=V1ContainerStateWaiting(reason=waiting)) if waiting else V1ContainerState()
    )
    status = V1ContainerStatus(
        name="app", image="mlops-sandbox:0.1.0", image_id="", ready=ready, restart_count=restarts, state=state
    )
    return V1Pod(
        metadata=V1ObjectMeta(name=name), status=V1PodStatus(phase=phase, container_statuses=[status])
    )


def pvc(name, phase="Bound"):
    return V1PersistentVolumeClaim(
        metadata=V1ObjectMeta(name=name),
        status=V1PersistentVolumeClaimStatus(
            phase=phase, capacity={"storage": "5Gi"} if phase == "Bound" else None
        ),
    )


def test_a_healthy_cluster_summarises_as_healthy():
    summary = ks.summarize(
        [deployment(name) for name in ks.DEPLOYMENTS],
        [pod("mlflow-abc"), pod("serving-def", restarts=1)],
        [pvc("mlflow-data"), pvc("monitor-data")],
        [deployment("ml-pipeline", 1, 1), deployment("ml-pipeline-ui", 1, 1)],
    )
    assert summary["healthy"] and summary["problems"] == []
    assert [d["name"] for d in summary["deployments"]] == sorted(ks.DEPLOYMENTS)
    assert summary["pvcs"][0] == {"name": "mlflow-data", "phase": "Bound", "capacity": "5Gi", "bound": True}
    # One restart is worth showing, not a failure.
    assert [p["name"] for p in summary["restarting"]] == ["serving-def"]
    assert summary["kfp"] == {"ready": 2, "total": 2, "not_ready": []}


def test_every_problem_is_named():
    present = [deployment(n) for n in ks.DEPLOYMENTS if n not in ("retrainer", "serving")]
    summary = ks.summarize(
        [*present, deployment("serving", desired=2, ready=1)],
        [pod("monitor-x", restarts=7, waiting="CrashLoopBackOff", ready=False), pod("grafana-y")],
        [pvc("mlflow-data"), pvc("monitor-data", "Pending")],
        [deployment("ml-pipeline", 1, 0), deployment("minio", 1, 1)],
    )
    assert not summary["healthy"]
    assert summary["problems"] == [
        "deployment retrainer is missing",
        "deployment serving: 1/2 ready",
        "PVC monitor-data is Pending",
        "pod monitor-x: CrashLoopBackOff",
        "Kubeflow Pipelines not ready: ml-pipeline",
    ]
    assert summary["restarting"] == [
        {
            "name": "monitor-x",
            "phase": "Running",
            "restarts": 7,
            "ready": False,
            "waiting": "CrashLoopBackOff",
        }
    ]
    assert summary["kfp"] == {"ready": 1, "total": 2, "not_ready": ["ml-pipeline"]}


def test_a_rollout_in_progress_is_not_ready_even_with_enough_old_replicas():
    rows = ks.deployment_rows([deployment("serving", desired=1, ready=1, updated=0)])
    assert rows == [{"name": "serving", "ready": 1, "desired": 1, "updated": 0, "healthy": False}]


def test_status_without_a_kubeconfig_context_says_to_run_make_up(tmp_path, monkeypatch):
    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    monkeypatch.setenv("KUBECONFIG", str(config))
    with pytest.raises(ks.KindStackError) as info:
        ks.cluster_status()
    assert "kind-mlops-sandbox" in str(info.value) and "make up" in str(info.value)


def test_status_of_a_stopped_cluster_says_what_to_check(tmp_path, monkeypatch):
    """A context that points at nothing (the node container is gone): a clear error, quickly."""
    port = free_port()  # nothing listens there
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
                "contexts": [{"name": "kind-mlops-sandbox", "context": {"cluster": "c", "user": "u"}}],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "current-context": "kind-mlops-sandbox",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(config))
    started = time.monotonic()
    with pytest.raises(ks.KindStackError) as info:
        ks.cluster_status(timeout=2)
    assert "does not answer" in str(info.value) and "Docker" in str(info.value)
    assert time.monotonic() - started < 60


# --- the CLI's --kind branches ----------------------------------------------------------------


def test_sandbox_up_kind_without_the_tools_fails_fast_naming_them(monkeypatch):
    from typer.testing import CliRunner

    from sandbox.cli import app

    monkeypatch.setattr(ks.shutil, "which", lambda tool: None)
    started = time.monotonic()
    result = CliRunner().invoke(app, ["up", "--kind"])
    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    for needle in (
        "docker is not installed",
        "kind is not installed",
        "kubectl is not installed",
        "make demo",
    ):
        assert needle in text
    assert "Traceback" not in result.output


def test_sandbox_status_kind_without_a_cluster_says_to_run_make_up(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sandbox.cli import app

    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    monkeypatch.setenv("KUBECONFIG", str(config))
    result = CliRunner().invoke(app, ["status", "--kind", "--json"])
    assert result.exit_code == 1
    assert "make up" in " ".join(result.output.split()) and "Traceback" not in result.output


def test_every_kind_command_has_help():
    from typer.testing import CliRunner

    from sandbox.cli import app

    for command in ("up", "status", "train"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "--kind" in result.output


def test_the_repository_has_what_the_phases_apply_and_maps_the_ports_they_print():
    import yaml

    assert (REPO_ROOT / ks.OVERLAY / "kustomization.yaml").is_file()
    assert (REPO_ROOT / ks.KFP_DIR / "kustomization.yaml").is_file()
    assert any((REPO_ROOT / d / "kustomization.yaml").is_file() for d in ks.KFP_CLUSTER_SCOPED_DIRS)
    config = yaml.safe_load((REPO_ROOT / ks.KIND_CONFIG).read_text())
    assert config["name"] == ks.CLUSTER
    mapped = {m["hostPort"] for node in config["nodes"] for m in node.get("extraPortMappings", [])}
    assert mapped == set(ks.HOST_PORTS)


def test_sandbox_up_kind_runs_the_phases_and_prints_times_urls_and_the_grafana_login(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from sandbox import cli

    runner = FakeDocker()
    monkeypatch.setenv("SANDBOX_HOME", str(tmp_path))
    monkeypatch.setattr(ks, "run_command", runner)
    monkeypatch.setattr(ks, "preflight", lambda run, **kw: pf(run))
    monkeypatch.setattr(ks, "http_get", lambda url, timeout=5: KFP_READY)
    monkeypatch.setattr(cli.status_of, "champion", lambda settings: {"version": "3"})  # training is skipped
    result = CliRunner().invoke(cli.app, ["up", "--kind"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "champion v3 already registered; skipped" in result.output
    for phase in ("create cluster", "build image", "install Kubeflow Pipelines", "serving rollout", "total"):
        assert phase in result.output
    for url in ks.URLS.values():
        assert url in result.output
    assert "get secret grafana-admin -o jsonpath" in result.output and "make down" in result.output
    assert any(line.startswith("kind create cluster") for line in runner.lines())
    # Every phase kept its log under $SANDBOX_HOME/logs.
    logs = sorted(p.name for p in (tmp_path / "logs").glob("kind-*.log"))
    assert "kind-build-image.log" in logs and "kind-serving-rollout.log" in logs and len(logs) == 11
    assert "$ docker build -t mlops-sandbox:0.1.0" in (tmp_path / "logs" / "kind-build-image.log").read_text()


def test_sandbox_status_kind_shows_the_cluster_and_fails_when_something_is_wrong(monkeypatch):
    from typer.testing import CliRunner

    from sandbox import cli

    port = free_port()  # nothing listens there
    monkeypatch.setenv("SANDBOX_MLFLOW_PORT", str(port))
    monkeypatch.setenv("SANDBOX_KFP_HOST", f"http://127.0.0.1:{port}")
    broken = ks.summarize(
        [deployment(n) for n in ks.DEPLOYMENTS if n != "monitor"] + [deployment("monitor", ready=0)],
        [pod("monitor-x", restarts=4, waiting="CrashLoopBackOff", ready=False)],
        [pvc("mlflow-data")],
    )
    monkeypatch.setattr(ks, "cluster_status", lambda context, namespace: broken)
    table = CliRunner().invoke(cli.app, ["status", "--kind"], terminal_width=200)
    assert table.exit_code == 1
    assert "monitor-x: 4 restart(s) CrashLoopBackOff" in table.output
    assert "problem: deployment monitor: 0/1 ready" in table.output
    assert "KFP runs unavailable" in table.output and "PVCs: mlflow-data Bound 5Gi" in table.output
    as_json = CliRunner().invoke(cli.app, ["status", "--kind", "--json"])
    document = json.loads(as_json.output)
    assert as_json.exit_code == 1 and document["cluster"] == broken and document["champion"] is None
    assert document["kfp_runs"] is None and "does not answer" in document["kfp_error"]
    assert document["urls"]["Grafana"] == "http://127.0.0.1:3001"


# --- issue 15: what breaks a first `make up` on a real laptop ------------------------------------


def test_apple_silicon_is_refused_with_make_demo_as_the_way():
    for arch in ("aarch64", "arm64"):
        report = pf(FakeDocker(arch=arch))
        assert not report.ok and state(report)["architecture"] == ks.FAIL
        (problem,) = report.problems
        assert "needs amd64" in problem and "make demo" in problem and "#10308" in problem
    assert state(pf(FakeDocker(arch="x86_64")))["architecture"] == ks.OK


def test_a_kind_older_than_the_node_images_release_is_refused_and_the_upgrade_named():
    old = pf(FakeDocker(kind="v0.27.0"))
    assert not old.ok
    (problem,) = old.problems
    assert "kind v0.27.0 is older than v0.33.0" in problem and "sigs.k8s.io/kind@v0.33.0" in problem
    assert pf(FakeDocker(kind="v0.33.0")).ok and pf(FakeDocker(kind="v0.34.1")).ok


def test_missing_git_fails_and_the_kfp_tag_is_not_asked_for():
    runner = FakeDocker()
    report = pf(runner, which=lambda tool: None if tool == "git" else f"/usr/bin/{tool}")
    assert report.problems == [f"git is not installed: {ks.INSTALL_HINTS['git']}"]
    assert not any(c[0] == "git" for c in runner.calls)


def test_low_inotify_limits_warn_with_the_sysctl_fix_on_linux_only():
    def stock_ubuntu(path):
        return {"max_user_watches": "65536\n", "max_user_instances": "128\n"}.get(path.rsplit("/", 1)[-1])

    low = pf(FakeDocker(), read=stock_ubuntu)
    assert low.ok and state(low)["inotify"] == ks.WARNING
    (warning,) = low.warnings
    assert "max_user_watches=65536" in warning and "max_user_instances=128" in warning
    assert "sudo sysctl fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=512" in warning
    # Docker Desktop (and macOS) run kind in a VM: the host's limits do not apply.
    assert "inotify" not in state(pf(FakeDocker(os_name="Docker Desktop"), read=stock_ubuntu))
    assert "inotify" not in state(pf(FakeDocker(), read=stock_ubuntu, system="darwin"))


def test_port_5000_taken_on_macos_names_airplay_receiver_and_how_to_move_the_port():
    report = pf(FakeDocker(), port_free=lambda port: port != 5000, system="darwin")
    (problem,) = report.problems
    assert "5000" in problem and "AirPlay Receiver" in problem
    assert "hostPort: 5000" in problem and "SANDBOX_MLFLOW_PORT" in problem


def test_preflight_checks_the_ports_kind_config_maps(tmp_path):
    (tmp_path / "manifests/kfp").mkdir(parents=True)
    (tmp_path / "manifests/kfp/kustomization.yaml").write_text("resources: [x?ref=2.17.0]\n")
    (tmp_path / "kind-config.yaml").write_text("nodes:\n  - extraPortMappings:\n      - {hostPort: 5001}\n")
    asked = []
    pf(FakeDocker(), port_free=lambda port: asked.append(port) or True, root=tmp_path)
    assert asked == [5001]


def test_low_docker_cpus_and_disk_warn():
    report = pf(FakeDocker(cpus=2), free=lambda path: 5 * GiB)
    assert state(report)["docker CPUs"] == ks.WARNING and state(report)["disk"] == ks.WARNING
    assert report.ok, "slow, not broken"
    assert any("5.0 GiB free under /var/lib/docker" in w for w in report.warnings)
    assert state(pf(FakeDocker(), free=lambda path: None))["disk"] == ks.SKIP  # Docker Desktop's VM


def test_a_kfp_ref_that_does_not_exist_fails_in_seconds_naming_the_newest_tags():
    report = pf(FakeDocker(tags=KFP_TAGS.replace("refs/tags/2.17.0", "refs/tags/2.15.0")))
    assert not report.ok
    (problem,) = report.problems
    assert "no release tag 2.17.0" in problem and "newest: 2.5.0, 2.15.0, 2.16.0, 2.16.1" in problem
    assert "cluster-scoped/kustomization.yaml" in problem
    unreachable = pf(
        FakeDocker(fail={"git ls-remote": (128, "fatal: unable to access: Could not resolve host")})
    )
    (problem,) = unreachable.problems
    assert "Could not resolve host" in problem and "network or proxy" in problem


def test_release_tags_keep_backend_tags_only_in_version_order():
    listing = KFP_TAGS + "\nabc\trefs/tags/2.10.0\ndef\trefs/tags/2.0.0-rc.1\n"
    assert ks.release_tags(listing) == ["2.5.0", "2.10.0", "2.16.0", "2.16.1", "2.17.0"]
    assert ks.kfp_ref() == "2.17.0"


def test_the_build_leaves_out_attestations_only_when_buildkit_builds(monkeypatch, tmp_path):
    monkeypatch.delenv("DOCKER_BUILDKIT", raising=False)
    monkeypatch.delenv("SANDBOX_BASE_IMAGE", raising=False)
    buildkit = FakeDocker()
    ks.build_image(buildkit, tmp_path)
    assert (
        buildkit.lines()[-1]
        == f"docker build -t mlops-sandbox:0.1.0 --provenance=false --sbom=false {tmp_path}"
    )
    legacy = FakeDocker(fail={"docker buildx version": (1, "docker: 'buildx' is not a docker command")})
    ks.build_image(legacy, tmp_path)
    assert legacy.lines()[-1] == f"docker build -t mlops-sandbox:0.1.0 {tmp_path}"
    monkeypatch.setenv("DOCKER_BUILDKIT", "0")
    forced = FakeDocker()
    ks.build_image(forced, tmp_path)
    assert "--provenance=false" not in forced.lines()[-1]


def test_the_image_is_saved_for_one_platform_only_where_docker_can(tmp_path):
    new, old = FakeDocker(api="1.51"), FakeDocker(api="1.47")
    ks.load_image(new, tmp_path, arch="amd64")
    ks.load_image(old, tmp_path, arch="amd64")
    archive = tmp_path / "image.tar"
    assert f"docker save -o {archive} --platform linux/amd64 mlops-sandbox:0.1.0" in new.lines()
    assert f"docker save -o {archive} mlops-sandbox:0.1.0" in old.lines()
    assert new.lines()[-1] == old.lines()[-1] == f"kind load image-archive {archive} --name mlops-sandbox"


def test_image_changed_only_in_a_kept_cluster_with_another_or_no_record():
    assert ks.image_changed(True, "sha256:old", "sha256:new")
    assert ks.image_changed(True, None, "sha256:new"), "state removed (`make clean`): restart to be sure"
    assert not ks.image_changed(True, "sha256:same", "sha256:same")
    assert not ks.image_changed(False, "sha256:old", "sha256:new"), "a new cluster has no old pods"


def test_a_second_up_after_a_code_change_restarts_the_project_pods(tools, tmp_path):
    (tmp_path / ks.LOADED_IMAGE_RECORD).write_text("sha256:" + "0" * 64)
    runner = FakeDocker(cluster=True, secret=True, image_id="sha256:" + "b" * 64)
    results = {r.name: r.detail for r in ks.up(runner, lambda: "skipped", tmp_path)}
    lines = runner.lines()
    restart = next(i for i, line in enumerate(lines) if "rollout restart" in line)
    assert lines[restart].endswith(
        "rollout restart deployment/mlflow deployment/serving deployment/monitor deployment/retrainer -n mlops"
    )
    applied = next(i for i, line in enumerate(lines) if f"apply -k {REPO_ROOT / ks.OVERLAY}" in line)
    first_rollout = next(i for i, line in enumerate(lines) if "rollout status" in line)
    assert applied < restart < first_rollout
    assert results["restart on new image"] == "new image: restarted mlflow, serving, monitor, retrainer"
    assert (tmp_path / ks.LOADED_IMAGE_RECORD).read_text() == "sha256:" + "b" * 64


def test_kfp_health_through_the_ui_needs_api_server_ready():
    def ui(ready):
        return lambda url: (200, json.dumps({"apiServerReady": ready, "apiServerTagName": "2.17.0"}))

    ready, detail = ks.kfp_api_health("http://127.0.0.1:8080", ui(False))
    assert not ready and "apiServerReady: false" in detail and "app=ml-pipeline" in detail
    assert ks.kfp_api_health("http://127.0.0.1:8080/", ui(True)) == (
        True,
        "Kubeflow Pipelines API ready (backend 2.17.0)",
    )
    # The API server itself (SANDBOX_KFP_HOST pointing past the UI) has no such field: its 200 counts.
    api = ks.kfp_api_health(
        "http://ml-pipeline:8888", lambda url: (200, '{"commit_sha": "x", "tag_name": "2.17.0"}')
    )
    assert api == (True, "Kubeflow Pipelines API ready (backend 2.17.0)")
    assert not ks.kfp_api_health("http://h", lambda url: (503, ""))[0]
    assert ks.kfp_api_health("http://h", lambda url: (0, "Connection refused")) == (
        False,
        "the Kubeflow Pipelines API does not answer at http://h (Connection refused)",
    )


def test_waiting_for_the_kfp_api_polls_until_ready_and_says_why_it_gave_up():
    answers = iter([(0, "refused"), (200, '{"apiServerReady": false}'), (200, '{"apiServerReady": true}')])
    now = [0.0]
    detail = ks.wait_kfp_api(
        "http://h",
        60,
        lambda url: next(answers),
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s),
    )
    assert detail.startswith("Kubeflow Pipelines API ready") and now[0] == 6
    with pytest.raises(ks.KindStackError) as info:
        ks.wait_kfp_api("http://h", 10, lambda url: (200, '{"apiServerReady": false}'), clock=lambda: now[0],
                        sleep=lambda s: now.__setitem__(0, now[0] + s))  # fmt: skip
    assert "not ready after 10s" in str(info.value) and "apiServerReady: false" in str(info.value)


def test_a_rollout_timeout_shows_the_namespaces_latest_events():
    class Events(FakeDocker):
        def __call__(self, args, **kwargs):
            if "events" in args:
                self.calls.append(list(args))
                return ks.CommandResult(
                    0, "LAST SEEN  TYPE  REASON\n2m  Warning  FailedScheduling  Insufficient memory\n"
                )
            return super().__call__(args, **kwargs)

    runner = Events(
        fail={"rollout status deployment/mlflow": (1, "error: timed out waiting for the condition")}
    )
    with pytest.raises(ks.KindStackError) as info:
        ks.wait_rollouts(runner, ["mlflow"], timeout=5)
    message = str(info.value)
    assert "rollout of mlflow failed" in message and "timed out waiting" in message
    assert "latest events in mlops:" in message and "Insufficient memory" in message
    assert runner.lines()[-1].endswith("get events -n mlops --sort-by=.lastTimestamp")


def test_a_failed_phase_names_its_log_which_holds_the_command_and_output(tools, tmp_path):
    runner = FakeDocker(fail={"docker build": (1, "ERROR: failed to solve: network unreachable")})
    with pytest.raises(ks.KindStackError) as info:
        ks.up(runner, lambda: "", tmp_path / "kind", logs_dir=tmp_path / "logs")
    log = tmp_path / "logs" / "kind-build-image.log"
    assert f"full log: {log}" in str(info.value)
    text = log.read_text()
    assert (
        "$ docker build -t mlops-sandbox:0.1.0" in text
        and "[exit 1]" in text
        and "network unreachable" in text
    )


def test_the_grafana_password_is_never_written_to_a_log(tools, tmp_path):
    runner = FakeDocker()
    logged = ks.PhaseLog(runner, tmp_path)
    logged.start("Grafana admin secret")
    ks.ensure_grafana_secret(logged, make_password=lambda: "s3cret-pw")
    assert "s3cret-pw" not in (tmp_path / "kind-grafana-admin-secret.log").read_text()


def test_sandbox_doctor_prints_every_check_and_its_fix_and_json(monkeypatch):
    from typer.testing import CliRunner

    from sandbox import cli

    monkeypatch.setattr(ks, "run_command", FakeDocker(kind="v0.29.0"))
    monkeypatch.setattr(ks, "preflight", lambda run, **kw: pf(run))
    table = CliRunner().invoke(cli.app, ["doctor"], terminal_width=250)
    assert table.exit_code == 1
    for needle in ("kind version", "fail", "KFP manifests", "architecture", "make demo"):
        assert needle in " ".join(table.output.split())
    as_json = CliRunner().invoke(cli.app, ["doctor", "--json"])
    document = json.loads(as_json.output)
    assert as_json.exit_code == 1 and document["ok"] is False
    kind = next(c for c in document["checks"] if c["name"] == "kind version")
    assert (
        kind["state"] == "fail" and "older than v0.33.0" in kind["detail"] and "upgrade kind" in kind["fix"]
    )
    assert CliRunner().invoke(cli.app, ["doctor", "--help"]).exit_code == 0


def test_the_stdlib_doctor_answers_json_and_explains_its_usage():
    code = subprocess.run(
        [sys.executable, "-m", "sandbox.kind_stack", "doctor", "--json"],
        cwd=REPO_ROOT, env={"PATH": "/nonexistent", "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    document = json.loads(code.stdout)
    assert code.returncode == 1 and document["ok"] is False
    assert {c["name"] for c in document["checks"]} >= {"docker", "kind", "kubectl", "git"}
    assert ks.main(["nonsense"]) == 2


def test_make_train_submits_to_kfp_when_the_cluster_exists(tmp_path):
    """The Makefile's recipe with a fake `kind` and a fake `sandbox` that prints its arguments."""
    import os
    import shutil as sh

    if sh.which("make") is None:
        pytest.skip("make is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sandbox = bin_dir / "sandbox"
    sandbox.write_text('#!/bin/sh\necho "sandbox $*"\n')
    sandbox.chmod(0o755)
    results = {}
    for clusters in ("mlops-sandbox", "other"):
        kind = bin_dir / "kind"
        kind.write_text(f'#!/bin/sh\n[ "$1 $2" = "get clusters" ] && echo {clusters}\n')
        kind.chmod(0o755)
        done = subprocess.run(
            ["make", "--no-print-directory", "-o", "setup", "train", f"SANDBOX={sandbox}"],
            cwd=REPO_ROOT, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        results[clusters] = done.stdout.strip().splitlines()[-1]
    assert results == {"mlops-sandbox": "sandbox train --kind", "other": "sandbox train"}
