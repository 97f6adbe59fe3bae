"""Chaos: the loop survives its components being killed, one at a time (issue 10, item 4).

One stack for the whole module (free ports, the demo's short intervals), one traffic thread that
records every answered request id and every failure with its time. While it runs, in sequence:
MLflow (during a swap: the champion alias has moved, serving has not loaded it yet), Prometheus,
Alertmanager, the monitor (records streaming in), one serving worker and the retrainer
(mid-retraining) are killed with SIGKILL (the whole process group; the serving worker alone). Each time supervisord
(for the worker: BentoML's arbiter) brings it back; the test measures the seconds to healthy, the
requests that failed meanwhile, and the records served but missing from the monitor's store (by
request id, read from its SQLite file). Then the loop completes: the alert fires, the interrupted
retraining is recorded as failed and retried, the new champion serves, drift falls, the alert resolves.

Failed-request budget: 0 for every fault but the killed serving worker's own (its request in
flight, at most ``WORKER_FAILED_BUDGET``). Records lost: 0 for every fault but the killed worker's
(what its in-memory feed queue held, at most ``WORKER_LOST_BUDGET``: never acknowledged, so no
acknowledged record is lost). Tests run in file order and share the stack; each waits on a
condition, bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import psutil
import pytest

from sandbox import local_stack
from sandbox.background import Background
from sandbox.demo import (
    Demo,
    Timeline,
    demo_settings,
    retraining_done,
    retraining_since,
)
from sandbox.settings import Settings
from sandbox.status import retrainer_status, served_version
from sandbox.traffic import LabelScheduler, Pacer, RowSource, TrafficControl, TrafficSummary
from tests.integration.test_local_stack import stack_env

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(900),  # per test, the first one includes the stack's start and v1's training
    pytest.mark.skipif(
        not (shutil.which("prometheus") and local_stack.alertmanager_binary()),
        reason="needs Prometheus and Alertmanager (`make setup` installs them on Debian/Ubuntu)",
    ),
]

RPS, ROWS_PER_REQUEST = 30.0, 2
WORKER_FAILED_BUDGET = 2  # the request in flight on the killed worker (one client connection)
# The killed worker's feed queue: at most one flush interval (0.5 s) of rows plus one in-flight batch.
WORKER_LOST_BUDGET = int(2 * RPS * ROWS_PER_REQUEST)
RECOVER_TIMEOUT = 120.0
ROWS: list[dict] = []  # the table, one row per fault


class Traffic:
    """The demo's traffic, remembering every answered request id and every failure with its time."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.control = TrafficControl()
        self.answered: dict[str, float] = {}  # request_id -> when its answer came
        self.failures: list[tuple[float, str]] = []
        self.requests = 0

    def run(self, task: Background) -> None:
        source = RowSource(ROWS_PER_REQUEST, int(RPS * ROWS_PER_REQUEST), seed=int(time.time()) % 10_000)
        pacer = Pacer(RPS)
        with httpx.Client(timeout=10) as client:
            labels = LabelScheduler(client, self.settings.monitor_url, 2.0, TrafficSummary("chaos", 1.0))
            while not self.control.stop.is_set():
                pacer.wait(self.requests)
                sent = source.take(self.control.scenario, self.control.severity)
                self.requests += 1
                sent_at = time.time()
                try:
                    response = client.post(
                        f"{self.settings.serving_url}/predict", json={"rows": [row for row, _ in sent]}
                    )
                except httpx.HTTPError as exc:
                    response, error = None, f"{type(exc).__name__}: {exc}"
                now = time.time()
                if response is not None and response.status_code == 200:
                    answer = response.json()
                    self.answered.update((item["request_id"], now) for item in answer)
                    labels.add(answer, [y for _, y in sent])
                else:  # what and when: enough to tell a slow answer from a refused or cut one
                    if response is not None:
                        error = f"{response.status_code} {response.text[:200]}"
                    sent_clock = time.strftime("%H:%M:%S", time.localtime(sent_at))
                    self.failures.append((now, f"{error} (sent {sent_clock}, after {now - sent_at:.1f} s)"))
                labels.send_due()
                if self.requests % int(RPS) == 0:
                    task.progress()

    def failed_between(self, start: float, end: float) -> list[str]:
        return [status for at, status in self.failures if start <= at <= end]

    def answered_between(self, start: float, end: float) -> set[str]:
        return {rid for rid, at in list(self.answered.items()) if start <= at <= end}


class ChaosDemo(Demo):
    """The demo's steps with this module's recording traffic instead of its own."""

    def start_traffic(self) -> None:
        self.recorder = Traffic(self.settings)
        self.control = self.recorder.control
        self.traffic = Background("the chaos traffic", self.recorder.run, stall_seconds=30).start()
        self.clean_start = self.timeline.add("clean traffic")


# --- helpers ---------------------------------------------------------------------------------------


def info(settings: Settings, name: str) -> dict:
    return local_stack.rpc(settings).supervisor.getProcessInfo(name)


def healthy(settings: Settings, name: str, old_pid: int) -> bool:
    state = info(settings, name)
    if state["statename"] != "RUNNING" or state["pid"] == old_pid:
        return False
    prog = next(p for p in local_stack.programs(settings) if p.name == name)
    return local_stack.probe(prog.url(settings) + prog.health_path)[0]


def stored_ids(settings: Settings) -> set[str]:
    """Request ids in the monitor's store, read from its SQLite file (WAL: readers never block it)."""
    path = settings.monitor_db_path or settings.home / "monitor" / "monitor.db"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as conn:
        return {row[0] for row in conn.execute("SELECT request_id FROM records")}


def feed_counts(settings: Settings) -> dict[str, float]:
    """serving's ``sandbox_monitor_feed_records_total`` by outcome (all workers: multiprocess metrics)."""
    response = httpx.get(f"{settings.serving_url}/metrics", timeout=10)
    response.raise_for_status()
    text = response.text
    out: dict[str, float] = {}
    for outcome, value in re.findall(
        r'^sandbox_monitor_feed_records_total\{[^}]*outcome="([^"]+)"[^}]*\}\s+(\S+)', text, re.M
    ):
        out[outcome] = out.get(outcome, 0.0) + float(value)
    return out


def lost_records(demo: ChaosDemo, until: float, since: float = 0.0) -> set[str]:
    """Ids answered in [since, until] that the monitor does not hold, once the feed had time to deliver."""
    answered = demo.recorder.answered_between(since, until)
    missing: set[str] = set()

    def delivered() -> bool:
        nonlocal missing
        missing = answered - stored_ids(demo.settings)
        return not missing

    with contextlib.suppress(Exception):  # a timeout here is a loss, reported below, not an error
        demo.wait("feed delivers", delivered, 40, interval=1)
    return missing


def scrape_saw_down(settings: Settings, job: str, since: float) -> bool:
    seconds = max(10, int(time.time() - since) + 5)
    query = f'min_over_time(up{{job="{job}"}}[{seconds}s])'
    result = httpx.get(
        f"http://{settings.host}:{settings.prometheus_port}/api/v1/query", params={"query": query}, timeout=5
    ).json()["data"]["result"]
    return bool(result) and float(result[0]["value"][1]) == 0


def supervisord_saw_exit(settings: Settings, name: str) -> str | None:
    log = (settings.logs_dir / "supervisord.log").read_text(errors="replace")
    exits = re.findall(rf"exited: {name} \(([^)]*)\)", log)
    return exits[-1] if exits else None


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def record(demo: ChaosDemo, fault: str, detected_by: str, killed_at: float, recovered_at: float, lost: set):
    failed = demo.recorder.failed_between(killed_at, recovered_at + 5)
    row = {
        "fault": fault,
        "detected by": detected_by,
        "recovered in s": round(recovered_at - killed_at, 1),
        "requests failed": len(failed),
        "failures": sorted(set(failed)),
        "records lost": len(lost),
    }
    ROWS.append(row)
    if failed:  # what serving said meanwhile, for a failure in CI where the stack's logs are gone
        log = (demo.settings.logs_dir / "serving.log").read_text(errors="replace").splitlines()
        row = {**row, "serving log": log[-40:]}
        print(json.dumps(row, indent=1))  # whole: pytest cuts an assertion's message short
    return row


def kill_program(demo: ChaosDemo, name: str, *, detail: str = "") -> tuple[float, float, str]:
    """SIGKILL a supervised program's process group; wait until supervisord has it healthy again."""
    settings = demo.settings
    old = info(settings, name)["pid"]
    killed_at = time.time()
    kill_group(old)
    demo.wait(f"{name} comes back", lambda: healthy(settings, name, old), RECOVER_TIMEOUT, interval=0.25)
    recovered_at = time.time()
    detected = [f"supervisord ({supervisord_saw_exit(settings, name)})"]
    if name != "prometheus" and scrape_saw_down(settings, name, killed_at):
        detected.append("Prometheus up==0")
    return killed_at, recovered_at, " + ".join(detected + ([detail] if detail else []))


# --- the stack and the traffic ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    env = stack_env(tmp_path_factory.mktemp("chaos"))
    with pytest.MonkeyPatch.context() as patch:
        # The stack's programs inherit this process's environment (ports, home, PYTHONPATH).
        for key, value in env.items():
            if key.startswith("SANDBOX_"):
                patch.setenv(key, value)
        settings = demo_settings(Settings())
        demo = ChaosDemo(settings, Timeline(), clean_evaluations=1, timeout=420, on_status=print)
        started = time.monotonic()
        try:
            demo.start_stack()
            demo.train_v1()
            demo.start_traffic()
            yield demo
        finally:
            demo.stop_traffic()
            local_stack.down(settings)
            print(f"chaos module: {time.monotonic() - started:.0f}s")


# --- the faults, in order --------------------------------------------------------------------------


def test_the_stack_runs_this_checkout(demo):
    """The supervised programs import this worktree's code (PYTHONPATH reaches them)."""
    retrainer = psutil.Process(info(demo.settings, "retrainer")["pid"])
    assert str(local_stack.REPO_ROOT) in " ".join(retrainer.cmdline())
    assert retrainer.environ().get("PYTHONPATH") == os.environ.get("PYTHONPATH")
    # Serving's metric files are the stack's own: another `bentoml serve` on the machine wipes its dir.
    for worker in serving_workers(demo.settings):
        assert worker.environ()["PROMETHEUS_MULTIPROC_DIR"].startswith(str(demo.settings.home)), (
            worker.environ()
        )


def test_mlflow_killed_during_a_swap(demo):
    from mlflow.tracking import MlflowClient

    settings = demo.settings
    client = MlflowClient(settings.mlflow_uri)
    name = settings.model_name
    v1 = client.get_model_version_by_alias(name, "champion")
    # The same model as a new version (same run, so the same drift reference): a swap that changes
    # nothing but the version, so the loop's story is unchanged.
    model_id = v1.model_id or v1.source.removeprefix("models:/")  # MLflow 3: the logged model's id
    copy = client.create_model_version(
        name, source=v1.source, run_id=v1.run_id, model_id=model_id, tags={"trigger": "chaos"}
    )
    demo.wait("the copy is ready", lambda: client.get_model_version(name, copy.version).status == "READY", 30)
    old = info(settings, "mlflow")["pid"]
    client.set_registered_model_alias(name, "champion", copy.version)
    killed_at = time.time()
    kill_group(old)  # serving polls every 2 s: it learns of the alias only once MLflow is back
    swapping = served_version(settings) != copy.version
    demo.wait("mlflow comes back", lambda: healthy(settings, "mlflow", old), RECOVER_TIMEOUT, interval=0.25)
    back = time.time() - killed_at
    demo.wait("serving swaps", lambda: served_version(settings) == copy.version, RECOVER_TIMEOUT, 0.25)
    recovered_at = time.time()
    demo.result.champion_before = copy.version  # the clean phase judges this version
    detected = (
        f"supervisord ({supervisord_saw_exit(settings, 'mlflow')}); healthy after {back:.1f} s; "
        f"swap {'held until then' if swapping else 'already done'}"
    )
    row = record(
        demo,
        "mlflow (during a swap)",
        detected,
        killed_at,
        recovered_at,
        lost_records(demo, recovered_at, killed_at - 10),
    )
    assert swapping, "the kill came after the swap: nothing was tested"
    assert row["requests failed"] == 0 and row["records lost"] == 0, row


def test_prometheus_killed(demo):
    killed_at, recovered_at, detected = kill_program(demo, "prometheus")
    row = record(
        demo,
        "prometheus",
        detected,
        killed_at,
        recovered_at,
        lost_records(demo, recovered_at, killed_at - 10),
    )
    assert row["requests failed"] == 0 and row["records lost"] == 0, row


def test_alertmanager_killed(demo):
    killed_at, recovered_at, detected = kill_program(demo, "alertmanager")
    row = record(
        demo,
        "alertmanager",
        detected,
        killed_at,
        recovered_at,
        lost_records(demo, recovered_at, killed_at - 10),
    )
    assert row["requests failed"] == 0 and row["records lost"] == 0, row


def test_monitor_killed_while_records_stream_in(demo):
    before = feed_counts(demo.settings)
    # Records are streaming in: the monitor's store grew within the last seconds.
    held = len(stored_ids(demo.settings))
    demo.wait("records stream in", lambda: len(stored_ids(demo.settings)) > held, 10, interval=0.5)
    killed_at, recovered_at, detected = kill_program(demo, "monitor")
    lost = lost_records(demo, recovered_at + 2, killed_at - 10)
    after = feed_counts(demo.settings)
    retried = after.get("retried", 0) - before.get("retried", 0)
    dropped = sum(after.get(k, 0) - before.get(k, 0) for k in ("dropped_undeliverable", "dropped_queue_full"))
    row = record(demo, "monitor", f"{detected} + feed retried {retried:.0f}", killed_at, recovered_at, lost)
    assert row["requests failed"] == 0, row
    assert row["records lost"] == 0 and dropped == 0, (row, after)


def serving_workers(settings: Settings) -> list[psutil.Process]:
    """BentoML's worker processes (live ones: a killed worker is a zombie until the arbiter reaps it)."""
    found = []
    for proc in psutil.Process(info(settings, "serving")["pid"]).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and "worker" in " ".join(proc.cmdline()):
                found.append(proc)
    return found


def test_one_serving_worker_killed(demo):
    settings = demo.settings
    supervised = info(settings, "serving")["pid"]
    workers = serving_workers(settings)
    assert len(workers) == settings.serving_workers, [p.cmdline() for p in workers]

    # The worker that holds the traffic's keep-alive connection: killing it is what a client feels.
    def connections(proc: psutil.Process) -> int:
        with contextlib.suppress(psutil.Error):
            return sum(
                1
                for c in proc.net_connections("tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == settings.serving_port
            )
        return 0

    victim = max(workers, key=connections)
    held = connections(victim)
    log = settings.logs_dir / "serving.log"
    loaded_before = log.read_text(errors="replace").count("initialized")
    killed_at = time.time()
    victim.kill()

    def replaced() -> bool:
        now = serving_workers(settings)
        return (
            len(now) == settings.serving_workers
            and victim.pid not in {p.pid for p in now}
            and log.read_text(errors="replace").count("initialized") > loaded_before  # its model loaded
        )

    demo.wait("the worker comes back", replaced, RECOVER_TIMEOUT, interval=0.25)
    recovered_at = time.time()
    assert info(settings, "serving")["pid"] == supervised, "the arbiter replaced the worker, not supervisord"
    lost = lost_records(demo, recovered_at, killed_at - 10)
    detected = f"BentoML's arbiter (circus); the worker held {held} client connection(s)"
    row = record(demo, "serving worker", detected, killed_at, recovered_at, lost)
    assert row["requests failed"] <= WORKER_FAILED_BUDGET, row
    assert row["records lost"] <= WORKER_LOST_BUDGET, row


def training_children(settings: Settings) -> list[psutil.Process]:
    marker = str(settings.home.resolve())
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if (
                "pipelines.run" in (proc.info["cmdline"] or [])
                and proc.environ().get(local_stack.STACK_ENV) == marker
            ):
                found.append(proc)
    return found


def test_retrainer_killed_mid_retraining_and_the_loop_completes(demo):
    settings = demo.settings
    demo.clean_traffic()
    demo.incident()
    run = demo.wait("retrainer starts", lambda: retraining_since(settings, demo.incident_at), 120, 0.5)
    log = settings.logs_dir / f"{run['id']}.log"
    from pipelines.run import ANSI, STARTED

    def training() -> bool:  # mid-retraining: its pipeline child runs the 'train' step
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
        return any((m := STARTED.match(ANSI.sub("", line))) and m[2] == "train" for line in lines)

    demo.wait("training under way", training, 180, 0.5)
    children = training_children(settings)
    assert children, "no training child found"
    killed_at, recovered_at, detected = kill_program(demo, "retrainer")
    # The old incarnation's child is gone (it would compete for the CPU and could promote unrecorded).
    demo.wait(
        "orphans stopped",
        lambda: all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in children),
        30,
    )
    status = retrainer_status(settings)
    interrupted = next(r for r in status["history"] if r["id"] == run["id"])
    assert interrupted["state"] == "failed" and "interrupted" in interrupted["error"], interrupted
    retry = status["running"] or status["last"]
    assert retry["id"] != run["id"] and retry.get("resumes") == run["id"], status
    finished = demo.wait(
        "the retry finishes", lambda: retraining_done(settings, retry["id"]), settings.retrain_timeout_seconds
    )
    assert finished["state"] == "promoted", finished
    detail = f"retry {retry['id']} {finished['state']} in {finished['seconds']:.0f}s"
    row = record(demo, "retrainer (mid-retraining)", f"{detected}; {detail}", killed_at, recovered_at,
                 lost_records(demo, recovered_at, killed_at - 10))  # fmt: skip
    demo.result.champion_after = finished["model_version"]
    demo.recovery()  # serving swaps to the retry's version, drift falls on it, the alert resolves
    assert row["requests failed"] == 0 and row["records lost"] == 0, row


def test_no_acknowledged_record_lost_or_doubled(demo, capsys):
    """Over the whole run: every answered id is stored once, except what the killed worker held."""
    settings = demo.settings
    end = time.time()
    lost = lost_records(demo, end)
    path = settings.monitor_db_path or settings.home / "monitor" / "monitor.db"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        doubled = conn.execute(
            "SELECT COUNT(*) FROM (SELECT request_id FROM records GROUP BY request_id HAVING COUNT(*) > 1)"
        ).fetchone()[0]
    counts = feed_counts(settings)
    worker = next((r for r in ROWS if r["fault"] == "serving worker"), {"records lost": 0})
    with capsys.disabled():
        from rich.console import Console
        from rich.table import Table

        table = Table(
            title=f"chaos: {demo.recorder.requests} requests, {len(demo.recorder.answered)} rows answered"
        )
        columns = ("fault", "detected by", "recovered in s", "requests failed", "records lost")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in ROWS:
            table.add_row(*(str(row[c]) for c in columns))
        Console(width=160).print(table)
        print("feed:", json.dumps(counts), "| lost overall:", len(lost), "| doubled:", doubled)
        prometheus = f"http://{settings.host}:{settings.prometheus_port}/api/v1/query"
        query = {"query": "sum by (outcome) (max_over_time(sandbox_monitor_feed_records_total[15m]))"}
        print(
            "feed as Prometheus scraped it:", httpx.get(prometheus, params=query, timeout=10).json()["data"]
        )
        Path("test-artifacts").mkdir(exist_ok=True)
        Path("test-artifacts/chaos.json").write_text(json.dumps({"rows": ROWS, "feed": counts}, indent=2))
    assert doubled == 0
    assert counts.get("sent", 0) > 0, f"serving's /metrics lost the feed counters: {counts}"
    assert counts.get("dropped_undeliverable", 0) == 0 and counts.get("dropped_queue_full", 0) == 0, counts
    assert len(lost) <= worker["records lost"], (len(lost), worker)
