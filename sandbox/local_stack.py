"""The embedded stack: every long-running process under one supervisord, state in ``SANDBOX_HOME``.

``up`` is idempotent (a second call starts nothing twice), recovers from a crashed
supervisord (stale pid file, orphaned children), and names a port that is taken.
Every process carries ``SANDBOX_STACK_HOME`` in its environment, so ``down`` can
find and stop anything that escaped supervisord.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil

from sandbox.names import REPO_ROOT
from sandbox.settings import Settings

log = logging.getLogger(__name__)
STACK_ENV = "SANDBOX_STACK_HOME"
# Light, quiet and offline: no background job runner (~2 GiB less), no telemetry, no BentoML tracking.
BASE_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "True",
    "PYTHONUNBUFFERED": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


class StackError(RuntimeError):
    """A problem with the local stack; the message says what to do."""


def mlflow_server_command(host: str, port: int, store: Path) -> list[str]:
    """MLflow as the stack runs it (tests and benchmarks too): SQLite + proxied artifacts in ``store``,
    one worker (the default starts ~15 processes and ~2.3 GiB; with BASE_ENV and one worker ~0.4 GiB)."""
    return [
        venv_bin("mlflow"), "server", "--host", host, "--port", str(port),
        "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination", str(store / "artifacts"), "--serve-artifacts", "--workers", "1",
    ]  # fmt: skip


@dataclass(frozen=True)
class Program:
    name: str
    command: list[str]
    port: int
    health_path: str
    env: dict[str, str] = field(default_factory=dict)
    startsecs: int = 3

    def url(self, settings: Settings) -> str:
        return f"http://{settings.host}:{self.port}"


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


MONITORING = REPO_ROOT / "monitoring"


def alertmanager_binary() -> str | None:
    # Debian/Ubuntu name it prometheus-alertmanager; Homebrew and upstream, alertmanager.
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


MONITORING_INSTALL_HINT = (
    "install them with `make setup` (Debian/Ubuntu: `apt install prometheus prometheus-alertmanager`; "
    "macOS: `brew install prometheus alertmanager`), then run `sandbox up --local` again"
)


def missing_monitoring() -> list[str]:
    """Prometheus and Alertmanager binaries not on PATH: without them the stack runs, but no alert fires."""
    return [
        name
        for name, found in (
            ("prometheus", shutil.which("prometheus")),
            ("alertmanager", alertmanager_binary()),
        )
        if not found
    ]


def missing_monitoring_message(missing: list[str]) -> str:
    return f"{' and '.join(missing)} not found on PATH: no alert can fire, so the loop cannot close; {MONITORING_INSTALL_HINT}"


def render_monitoring_config(settings: Settings) -> tuple[Path, Path]:
    """Copies of monitoring/'s Prometheus and Alertmanager configs with this stack's ports and paths."""
    import yaml

    ports = {
        "prometheus": settings.prometheus_port,
        "alertmanager": settings.alertmanager_port,
        "serving": settings.serving_port,
        "monitor": settings.monitor_port,
        "retrainer": settings.retrainer_port,
    }
    prometheus = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    prometheus["rule_files"] = [str(render_rules(settings))]
    prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
        f"{settings.host}:{settings.alertmanager_port}"
    ]
    for job in prometheus["scrape_configs"]:
        job["static_configs"][0]["targets"] = [f"{settings.host}:{ports[job['job_name']]}"]
    alertmanager = yaml.safe_load((MONITORING / "alertmanager" / "alertmanager.yml").read_text())
    for key in ("group_wait", "group_interval"):
        if value := getattr(settings, f"alertmanager_{key}"):
            alertmanager["route"][key] = value
            for route in alertmanager["route"].get("routes", []):
                route[key] = value
    for receiver in alertmanager["receivers"]:
        for hook in receiver.get("webhook_configs", []):  # the retrainer's endpoints: /alerts, /notifications
            hook["url"] = f"http://{settings.host}:{settings.retrainer_port}{urlparse(hook['url']).path}"
    paths = (
        settings.home / "prometheus" / "prometheus.yml",
        settings.home / "alertmanager" / "alertmanager.yml",
    )
    for path, config in zip(paths, (prometheus, alertmanager), strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return paths


def render_rules(settings: Settings) -> Path:
    """The rule files as a glob: monitoring/'s own, or copies with ``alert_for_overrides`` applied."""
    import yaml

    source = MONITORING / "prometheus" / "rules"
    if not settings.alert_for_overrides:
        return source / "*.yml"
    target = settings.home / "prometheus" / "rules"
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.yml")):
        rules = yaml.safe_load(path.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") in settings.alert_for_overrides:
                    rule["for"] = settings.alert_for_overrides[rule["alert"]]
        (target / path.name).write_text(yaml.safe_dump(rules, sort_keys=False))
    return target / "*.yml"


def config_digest(*paths: Path) -> str:
    """A short digest of rendered config files: in a program's environment, a change restarts it."""
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        for file in sorted(path.rglob("*.yml")) if path.is_dir() else [path]:
            if file.is_file():
                digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def programs(settings: Settings, profile: dict[str, str] | None = None) -> list[Program]:
    """The processes of the embedded stack.

    ``profile``: ``SANDBOX_*`` settings for the services (the demo's short intervals). They are
    written into the supervisord config, so ``up`` with another profile restarts what changed.
    """
    mlflow_dir = settings.mlflow_dir
    profile = dict(profile or {})
    return [
        Program(
            name="mlflow",
            command=mlflow_server_command(settings.host, settings.mlflow_port, mlflow_dir),
            port=settings.mlflow_port,
            health_path="/health",
        ),
        Program(
            name="serving",
            command=[
                venv_bin("bentoml"), "serve", "services.serving.service:Serving",
                "--working-dir", str(REPO_ROOT),
                "--host", settings.host,
                "--port", str(settings.serving_port),
            ],
            port=settings.serving_port,
            # Alive is enough for the stack: readiness waits for a champion (`sandbox status` shows it).
            health_path="/livez",
            # 2 cores, 2 workers: one native thread each, or BLAS/OpenMP threads fight over the cores.
            # A BentoML home of its own: `bentoml serve` wipes <BENTOML_HOME>/prometheus_multiproc_dir
            # at start, so with the shared ~/bentoml any other serve on the machine (a test, a second
            # stack) erased this one's metric files: its feed and prediction counters vanished from
            # /metrics, and it reported the other's (found by tests/chaos).
            env={"OMP_NUM_THREADS": "1", "BENTOML_HOME": str(settings.home / "bentoml"), **profile},
        ),
        Program(
            name="monitor",
            command=[
                venv_bin("uvicorn"), "services.monitor.app:create_app", "--factory",
                "--host", settings.host,
                "--port", str(settings.monitor_port),
                "--app-dir", str(REPO_ROOT),
            ],
            port=settings.monitor_port,
            health_path="/healthz",
            env=profile,
        ),
        Program(
            name="retrainer",
            command=[
                venv_bin("uvicorn"), "services.retrainer.app:create_app", "--factory",
                "--host", settings.host,
                "--port", str(settings.retrainer_port),
                "--app-dir", str(REPO_ROOT),
            ],
            port=settings.retrainer_port,
            health_path="/healthz",
            env=profile,
        ),
    ] + monitoring_programs(settings)  # fmt: skip


def monitoring_programs(settings: Settings) -> list[Program]:
    """Real Prometheus and Alertmanager (Debian: apt install prometheus prometheus-alertmanager)."""
    found = []
    home = settings.home
    if shutil.which("prometheus"):
        found.append(Program(
            name="prometheus",
            command=[
                shutil.which("prometheus"),
                f"--config.file={home / 'prometheus' / 'prometheus.yml'}",
                f"--storage.tsdb.path={home / 'prometheus' / 'data'}",
                f"--web.listen-address={settings.host}:{settings.prometheus_port}",
                "--storage.tsdb.retention.time=2d",
            ],
            port=settings.prometheus_port,
            health_path="/-/ready",
            env={"SANDBOX_CONFIG_DIGEST": config_digest(home / "prometheus")},
        ))  # fmt: skip
    if alertmanager_binary():
        found.append(Program(
            name="alertmanager",
            command=[
                alertmanager_binary(),
                f"--config.file={home / 'alertmanager' / 'alertmanager.yml'}",
                f"--storage.path={home / 'alertmanager' / 'data'}",
                f"--web.listen-address={settings.host}:{settings.alertmanager_port}",
                "--cluster.listen-address=",  # one instance: no gossip port to collide with
            ],
            port=settings.alertmanager_port,
            health_path="/-/ready",
            env={"SANDBOX_CONFIG_DIGEST": config_digest(home / "alertmanager" / "alertmanager.yml")},
        ))  # fmt: skip
    return found


# --- paths -----------------------------------------------------------------------------------------


def supervisor_dir(settings: Settings) -> Path:
    return settings.home / "supervisor"


# A Unix socket path holds at most 107 bytes (sun_path); a deep SANDBOX_HOME would overflow it.
MAX_SOCKET_PATH = 100


def socket_path(settings: Settings) -> Path:
    path = supervisor_dir(settings) / "supervisor.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(settings.home.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"sandbox-{digest}.sock"  # one per home, still


def pid_path(settings: Settings) -> Path:
    return supervisor_dir(settings) / "supervisord.pid"


def config_path(settings: Settings) -> Path:
    return supervisor_dir(settings) / "supervisord.conf"


def render_config(settings: Settings, progs: list[Program]) -> str:
    lines = [
        "[unix_http_server]",
        f"file={socket_path(settings)}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={settings.logs_dir / 'supervisord.log'}",
        f"pidfile={pid_path(settings)}",
        f"directory={settings.home}",
        "logfile_maxbytes=5MB",
        "logfile_backups=1",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{socket_path(settings)}",
    ]
    for prog in progs:
        env = ",".join(f'{k}="{v}"' for k, v in prog.env.items())
        lines += [
            "",
            f"[program:{prog.name}]",
            "command=" + " ".join(prog.command),
            f"directory={settings.home}",
            "autostart=true",
            "autorestart=true",
            f"startsecs={prog.startsecs}",
            "startretries=3",
            # Whole process groups: MLflow and BentoML fork workers that must go too.
            "stopasgroup=true",
            "killasgroup=true",
            "stopwaitsecs=10",
            "redirect_stderr=true",
            f"stdout_logfile={settings.logs_dir / (prog.name + '.log')}",
            "stdout_logfile_maxbytes=10MB",
            "stdout_logfile_backups=1",
        ]
        if env:
            lines.append(f"environment={env}")
    return "\n".join(lines) + "\n"


# --- supervisord -------------------------------------------------------------------------------------


def rpc(settings: Settings):
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, serverurl=f"unix://{socket_path(settings)}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def supervisord_running(settings: Settings) -> bool:
    if not socket_path(settings).exists():
        return False
    try:
        return rpc(settings).supervisor.getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
        return False


def stack_processes(settings: Settings) -> list[psutil.Process]:
    """Every process started for this stack (found by the environment marker), supervisord included."""
    home = str(settings.home.resolve())
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(STACK_ENV) == home:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_stack_processes(settings: Settings, timeout: float = 10) -> int:
    procs = stack_processes(settings)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return len(procs)


def clear_stale_state(settings: Settings) -> int:
    """After a crash: stop orphans of the old stack and remove its pid file and socket."""
    killed = kill_stack_processes(settings)
    for path in (pid_path(settings), socket_path(settings)):
        path.unlink(missing_ok=True)
    if killed:
        log.warning("stopped %d orphaned process(es) of a previous stack", killed)
    return killed


# What a stack leaves in its home that a later story must not inherit: the registry, the records,
# the retrainer's journal and release state, the TSDB, the notifications. Kept in place: the reports
# people open, the kind cluster's files, supervisord's own runtime directory and earlier moves.
KEPT_IN_HOME = ("reports", "kind", "supervisor", "past-runs")


def move_state_aside(settings: Settings) -> Path | None:
    """Stop the stack and move its state to ``<home>/past-runs/<UTC time>/``; None when there is none.

    The demo starts every story from an empty registry: a champion left by an earlier run would
    stand in the way of its v1 (the gate keeps it), and the retrainer's cooldown would hold its
    retraining. Moved, not deleted: ``make clean`` removes it.
    """
    home = settings.home
    if not any((home / name).exists() for name in ("mlflow", "monitor", "retrainer")):
        return None
    down(settings)
    target = home / "past-runs" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    leftovers = [p for p in sorted(home.iterdir()) if p.name not in KEPT_IN_HOME]
    target.mkdir(parents=True, exist_ok=True)
    for path in leftovers:
        shutil.move(path, target / path.name)
    log.info("moved the state of an earlier run to %s", target)
    return target


def port_owner(host: str, port: int) -> str | None:
    """A description of whoever listens on ``host:port``, or None when the port is free."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return None
        except OSError:
            pass
    try:
        for conn in psutil.net_connections("tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({' '.join(proc.cmdline()[:3])})"
    except (psutil.Error, OSError):
        pass
    return "another process"


def check_ports(settings: Settings, progs: list[Program]) -> None:
    taken = []
    for prog in progs:
        owner = port_owner(settings.host, prog.port)
        if owner:
            env = f"SANDBOX_{prog.name.upper()}_PORT"
            taken.append(f"port {prog.port} for {prog.name} is taken by {owner}: stop it or set {env}")
    if taken:
        raise StackError("; ".join(taken))


def start_supervisord(settings: Settings, timeout: float = 20) -> None:
    env = {**os.environ, **BASE_ENV, STACK_ENV: str(settings.home.resolve())}
    started = subprocess.run(
        [venv_bin("supervisord"), "-c", str(config_path(settings))],
        env=env,
        cwd=settings.home,
        capture_output=True,
        text=True,
    )
    if started.returncode != 0:
        raise StackError(
            f"supervisord did not start: {(started.stderr or started.stdout).strip()[:300]} "
            f"(config {config_path(settings)}; `sandbox down`, then `sandbox up --local` again)"
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if supervisord_running(settings):
            return
        time.sleep(0.2)
    raise StackError(f"supervisord did not come up; see {settings.logs_dir / 'supervisord.log'}")


# --- health and status -----------------------------------------------------------------------------


def probe(url: str, timeout: float = 2.0) -> tuple[bool, str]:
    try:
        resp = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return False, type(exc).__name__
    return resp.status_code < 400, f"HTTP {resp.status_code}"


def status(settings: Settings) -> list[dict]:
    """One row per program: supervisor state, pid, URL and whether its health endpoint answers."""
    states = {}
    if supervisord_running(settings):
        states = {info["name"]: info for info in rpc(settings).supervisor.getAllProcessInfo()}
    rows = []
    for prog in programs(settings):
        info = states.get(prog.name, {})
        health_url = prog.url(settings) + prog.health_path
        healthy, detail = probe(health_url) if info.get("statename") == "RUNNING" else (False, "not running")
        rows.append(
            {
                "name": prog.name,
                "state": info.get("statename", "STOPPED"),
                "pid": info.get("pid") or None,
                "url": prog.url(settings),
                "health": health_url,
                "healthy": healthy,
                "detail": detail,
                "log": str(settings.logs_dir / f"{prog.name}.log"),
            }
        )
    return rows


def wait_healthy(
    settings: Settings, progs: list[Program], timeout: float, on_ready: Callable[[str], None]
) -> None:
    pending = {p.name: p for p in progs}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for name, prog in list(pending.items()):
            if probe(prog.url(settings) + prog.health_path)[0]:
                del pending[name]
                on_ready(name)
        if pending:
            time.sleep(0.5)
    if pending:
        logs = ", ".join(str(settings.logs_dir / f"{n}.log") for n in pending)
        raise StackError(f"{', '.join(pending)} did not become healthy in {timeout:.0f}s; see {logs}")


# --- up / down ---------------------------------------------------------------------------------------


def up(
    settings: Settings,
    timeout: float = 120,
    on_ready: Callable[[str], None] = lambda name: None,
    profile: dict[str, str] | None = None,
) -> list[dict]:
    """Start (or complete) the embedded stack and wait until every program is healthy.

    A running stack whose configuration changed (another ``profile``, other ports or alert
    timings) has exactly the changed programs restarted.
    """
    for path in (supervisor_dir(settings), settings.logs_dir, settings.mlflow_dir):
        path.mkdir(parents=True, exist_ok=True)
    render_monitoring_config(settings)
    progs = programs(settings, profile)
    config_path(settings).write_text(render_config(settings, progs))

    if supervisord_running(settings):
        server = rpc(settings).supervisor
        added, changed, removed = server.reloadConfig()[0]
        for name in removed + changed:
            server.stopProcessGroup(name)
            server.removeProcessGroup(name)
        for name in changed + added:
            server.addProcessGroup(name)
        running = {i["name"] for i in server.getAllProcessInfo() if i["statename"] in ("RUNNING", "STARTING")}
        missing = [p for p in progs if p.name not in running]
        check_ports(settings, missing)
        for prog in missing:
            log.info("starting %s", prog.name)
            server.startProcess(prog.name, False)
    else:
        clear_stale_state(settings)
        check_ports(settings, progs)
        start_supervisord(settings)
    wait_healthy(settings, progs, timeout, on_ready)
    return status(settings)


def down(settings: Settings, timeout: float = 30) -> int:
    """Stop everything; returns how many stray processes had to be killed after supervisord left."""
    if supervisord_running(settings):
        pid = int(pid_path(settings).read_text()) if pid_path(settings).exists() else None
        with contextlib.suppress(OSError, xmlrpc.client.Fault):
            rpc(settings).supervisor.shutdown()
        if pid and psutil.pid_exists(pid):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
                psutil.Process(pid).wait(timeout)
    return clear_stale_state(settings)
