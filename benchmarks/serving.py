"""Benchmark serving: the BentoML service against ``mlflow models serve`` on the same model.

What it measures, all on 127.0.0.1, against its own throw-away MLflow server (a temp dir, a free port):

1. Trains the default model in-process (``generate_loans`` 20000 rows, ``split``/``train_model``,
   ``evaluate_model``, ``log_and_register`` + ``promote``) as ``bench-serving``: version 1 is champion.
2. The floor: in-process ``predict_proba`` of the loaded model (``mlflow.sklearn.load_model``) on a
   prepared 1-row and 64-row frame, the same with the DataFrame built from JSON rows, and the NumPy
   path on the JSON rows' columns; medians.
3. Three servers, one at a time, each stopped (whole process group) before the next:
   - ``mlflow-serve``: ``mlflow models serve -m models:/bench-serving/1 --env-manager local --workers W``
     (body ``{"dataframe_records": [...]}`` at ``/invocations``), the baseline;
   - ``bentoml``: ``bentoml serve services.serving.service:Serving`` with ``SANDBOX_SERVING_WORKERS=W``
     and the monitor feed off (body ``{"rows": [...]}`` at ``/predict``);
   - ``bentoml+feed``: the same with the monitor feed on, pointed at a tiny in-script ``/ingest``
     server (a thread answering 200 at once, counting the records it gets);
   - ``bentoml-sklearn``: ``bentoml`` with ``SANDBOX_SERVING_FAST_PATH=false``, every call through the
     sklearn pipeline as before the NumPy path (``services/serving/fastpath.py``): "today", same run.
   Each service's ``GET /model`` ``inference`` (numpy | sklearn, and why) is recorded.
4. Load on each: concurrency 1 and 16, single-row and 64-row bodies, a short warm-up then a fixed
   duration per case, keep-alive connections. ``wrk`` when installed (one thread, a Lua script that
   also counts statuses), else a Python load generator (asyncio + httpx). Latency covers every
   response; req/s counts 2xx responses only (a 503 shed by BentoML is an error, not throughput).
   Each case also records the CPU used meanwhile by processes outside this benchmark (a shared
   machine's noise), the load average, and the server's own CPU per answered request (which a busy
   machine disturbs far less than req/s).

It prints a table (server | concurrency | rows/request | req/s | p50 ms | p99 ms | errors | req/s vs
baseline), the floor, the monitor-feed delivery counts, errors found in the servers' logs, whether the
targets hold, and one JSON line with everything at the end (stdout; progress goes to stderr):

(a) single-row at concurrency 16: bentoml >= 5x the baseline's req/s, with a lower p99, 0 errors;
(b) single-row at concurrency 1: bentoml p50 <= 1.2x the baseline's p50, and no worse than bentoml-sklearn's;
(c) the monitor feed costs < 10% of bentoml's req/s at concurrency 16, single-row.

``--shadow`` adds a section: a second registered version (other hyperparameters) gets the alias
``challenger`` and ``bentoml+shadow`` (feed on, ``SANDBOX_SERVING_SHADOW_SHARE=1``: the feed's sender scores
every served row with it, within its time budget ``SANDBOX_SERVING_SHADOW_MAX_BUSY``) runs next to
``bentoml+feed`` (feed on, shadow off: share 0), interleaved in the same run; it prints req/s and p99 of
both, their ratio, how many rows the shadow scored and skipped (budget spent), and
(d) p99 with shadow on within 15 % of shadow off at concurrency 16 (per body size; each side's p99 is
the median of its runs' p99s, all rounds and repeats).

Run from the repository root (about 13 minutes with the defaults; servers take 20-40 s to start here):

    .venv/bin/python benchmarks/serving.py [--duration 15] [--warmup 3] [--workers 2]
        [--max-batch-size N] [--max-latency-ms MS] [--omp-threads N] [--servers ...]
        [--rounds N] [--repeats N] [--quiet-cpu PCT] [--load-generator auto|wrk|python] [--keep]

``--workers`` and ``--omp-threads`` apply to the baseline and the service alike (without ``--omp-threads`` the
service still runs one native thread per worker, as it sets that itself, and the baseline one per core);
``--max-batch-size`` and ``--max-latency-ms`` are passed to the service as ``SANDBOX_SERVING_MAX_BATCH_SIZE`` /
``_MAX_LATENCY_MS``.
Numbers jump between two instances of the same server (keep-alive connections stick to the worker that
accepted them: each run records the split, e.g. [13, 3]) and with other load on the machine (recorded as
others' CPU): ``--rounds 3`` (fresh instances, interleaved; the median-req/s run is shown), ``--repeats``
(runs per instance) and ``--quiet-cpu 30`` (wait for other processes to calm down) make them steadier.
``--service module:Class --service-dir DIR`` measures a variant of the service instead of
``services.serving.service:Serving``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.support: the one place of ports, waits and process groups

from sandbox.local_stack import BASE_ENV  # noqa: E402
from tests.support import servers  # noqa: E402
from tests.support.processes import (  # noqa: E402
    free_port,
    start_process_group,
    stop_process_group,
    wait_http,
)

VENV_BIN = Path(sys.executable).parent
MODEL_NAME = "bench-serving"
EXPERIMENT = "bench-serving"
BASELINE, SERVICE, SERVICE_FEED, SERVICE_SKLEARN = (
    "mlflow-serve",
    "bentoml",
    "bentoml+feed",
    "bentoml-sklearn",
)
SERVERS = (BASELINE, SERVICE, SERVICE_FEED, SERVICE_SKLEARN)
SERVICE_SHADOW = "bentoml+shadow"  # --shadow: the feed on and the challenger scoring in shadow
TARGET_D_P99 = 0.15
LOG_PROBLEM = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|Exception|\b5\d\d\b.*(?:error|Error)")
TARGET_A_RATIO, TARGET_B_RATIO, TARGET_C_COST = 5.0, 1.2, 0.10

WIDTH = None if sys.stdout.isatty() else 150  # rich wraps at 80 columns when piped
console = Console(stderr=True, width=WIDTH)


# --- processes ---------------------------------------------------------------------------------------


class Server:
    """A server in its own process group (tests/support/processes.py), logging to a file."""

    def __init__(self, name: str, proc: subprocess.Popen, log_path: Path):
        self.name, self.proc, self.log_path = name, proc, log_path
        self.started = time.monotonic()

    @classmethod
    def start(cls, name: str, command: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> Server:
        # The venv's bin first: `mlflow models serve` execs a bare `uvicorn`.
        path = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        return cls(
            name, start_process_group(command, log_path, {**BASE_ENV, "PATH": path, **env}, cwd), log_path
        )

    def wait_ready(self, url: str, timeout: float) -> float:
        """Seconds from the start until ``url`` answers 200 (an error with the log's tail if never)."""
        wait_http(url, timeout, process=self.proc, log_path=self.log_path)
        return time.monotonic() - self.started

    def stop(self, timeout: float = 20) -> None:
        stop_process_group(self.proc, timeout)


def start_mlflow(tmp: Path, port: int) -> Server:
    return Server("mlflow server", servers.start_mlflow(tmp, port), tmp / "mlflow-server.log")


class IngestHandler(BaseHTTPRequestHandler):
    """Stands in for the monitor: 200 to ``POST /ingest`` as soon as the body is read."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ok = self.path.rstrip("/") == "/ingest"
        if ok:
            try:
                found = json.loads(body).get("records", [])
            except (ValueError, AttributeError):
                found = []
            shadowed = sum(1 for r in found if isinstance(r, dict) and r.get("shadow_version") is not None)
            self.server.tally(len(found), shadowed)  # type: ignore[attr-defined]
        reply = b'{"accepted": true}' if ok else b'{"error": "not found"}'
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        pass


class IngestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int):
        super().__init__(("127.0.0.1", port), IngestHandler)
        self.lock = threading.Lock()
        self.posts = self.records = self.shadowed = 0

    def tally(self, records: int, shadowed: int = 0) -> None:
        with self.lock:
            self.posts += 1
            self.records += records
            self.shadowed += shadowed


# --- model -------------------------------------------------------------------------------------------


def json_rows(frame) -> list[dict]:
    """Rows as plain JSON values (numpy scalars -> Python, NaN -> None)."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in rows]


def train_and_register(tracking_uri: str, n_rows: int) -> dict:
    """The default model, trained here, registered as version 1 of ``bench-serving`` and promoted."""
    from pipelines.data import generate_loans
    from pipelines.evaluate import evaluate_model
    from pipelines.features import LOAN_SCHEMA
    from pipelines.params import DEFAULT_HYPERPARAMS
    from pipelines.registry import log_and_register, promote
    from pipelines.train import split, train_model
    from sandbox.settings import Settings

    settings = Settings()
    started = time.perf_counter()
    frame = generate_loans(n_rows, seed=0)
    train, holdout = split(frame, LOAN_SCHEMA, 0.25, 0)
    model = train_model(train, LOAN_SCHEMA)
    scores = evaluate_model(model, holdout, LOAN_SCHEMA)
    _, version = log_and_register(
        tracking_uri, model, LOAN_SCHEMA, train, params={"n_rows": n_rows, **DEFAULT_HYPERPARAMS},
        metrics=scores, model_name=MODEL_NAME, experiment=EXPERIMENT, tags={"trigger": "benchmark"},
    )  # fmt: skip
    decision = promote(
        tracking_uri, MODEL_NAME, version, holdout, LOAN_SCHEMA,
        min_score=settings.gate_min_score, tolerance=settings.gate_tolerance, metric=settings.gate_metric,
    )  # fmt: skip
    if not decision.promoted or decision.champion_version != "1":
        raise RuntimeError(f"expected version 1 to become champion, got {decision}")
    return {
        "seconds": time.perf_counter() - started,
        "version": version,
        "roc_auc": decision.metrics.get("roc_auc"),
        "rows64": json_rows(holdout[LOAN_SCHEMA.names].head(64)),
    }


def measure_floor(rows: dict[int, list[dict]], calls: int) -> dict:
    """Median in-process time of the registered model, per body size and thread cap.

    ``predict_ms``: ``predict_proba`` on a prepared frame; ``frame_and_predict_ms``: the DataFrame built
    from the JSON rows first; ``numpy_ms``: the NumPy path (what the service runs) on the rows' columns.
    ``default`` threads is scikit-learn's OpenMP pool (one thread per core);
    ``1 thread`` caps it with threadpoolctl, as ``OMP_NUM_THREADS=1`` does in a server.
    """
    import mlflow.sklearn
    import pandas as pd
    from threadpoolctl import threadpool_limits

    from pipelines.features import LOAN_SCHEMA
    from pipelines.train import features_only
    from services.serving.fastpath import compile_pipeline

    model = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}/1")
    compiled = compile_pipeline(model, LOAN_SCHEMA.names)

    def one(body_rows: list[dict]) -> dict:
        frame = features_only(pd.DataFrame(body_rows), LOAN_SCHEMA)
        columns = {name: [row[name] for row in body_rows] for name in LOAN_SCHEMA.names}
        model.predict_proba(frame)  # the first call pays lazy set-up
        prepared, built, numpy = [], [], []
        for _ in range(calls):
            t0 = time.perf_counter()
            model.predict_proba(frame)
            t1 = time.perf_counter()
            model.predict_proba(features_only(pd.DataFrame(body_rows), LOAN_SCHEMA))
            t2 = time.perf_counter()
            compiled.predict_proba(columns)
            prepared.append(t1 - t0)
            built.append(t2 - t1)
            numpy.append(time.perf_counter() - t2)
        return {
            "predict_ms": round(statistics.median(prepared) * 1000, 3),
            "frame_and_predict_ms": round(statistics.median(built) * 1000, 3),
            "numpy_ms": round(statistics.median(numpy) * 1000, 3),
            "calls": calls,
        }

    floor: dict = {}
    for threads in (None, 1):
        with threadpool_limits(threads) if threads else contextlib.nullcontext():
            for n, body_rows in rows.items():
                floor[f"{n} row{'s' if n > 1 else ''}, {'1 thread' if threads else 'default threads'}"] = one(
                    body_rows
                )
    return floor


# --- load --------------------------------------------------------------------------------------------

WRK_SCRIPT = """
local f = assert(io.open(%(body)s, "rb"))
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body)
  if status < 200 or status >= 300 then
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
  end
end
function done(summary, latency, requests)
  local parts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      table.insert(parts, string.format('"%%s": %%d', status, n))
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"responses": %%d, "duration_us": %%d, "non2xx_wrk": %%d, "connect": %%d, "read": %%d, '
    .. '"write": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d, "mean_us": %%.1f, "max_us": %%d, '
    .. '"statuses": {%%s}}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max, table.concat(parts, ", ")))
end
"""


def run_wrk(url: str, body_path: Path, concurrency: int, seconds: float, tmp: Path) -> dict:
    script = tmp / f"{body_path.stem}.lua"
    script.write_text(WRK_SCRIPT % {"body": json.dumps(str(body_path))})
    command = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "60s",
        "-s", str(script), url,
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_JSON ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    raw = json.loads(lines[-1][len("WRK_JSON ") :])
    duration = raw["duration_us"] / 1e6
    non2xx = sum(raw["statuses"].values())
    io_errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "responses": raw["responses"],
        "ok": raw["responses"] - non2xx,
        "seconds": duration,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "non2xx": non2xx,
        "statuses": raw["statuses"],
        "io_errors": io_errors,
        "io_error_kinds": {k: raw[k] for k in ("connect", "read", "write", "timeout") if raw[k]},
    }


async def python_load(url: str, body: bytes, concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    io_errors: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers=headers)
                    await response.aread()
                except httpx.HTTPError as exc:
                    io_errors[type(exc).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                statuses[str(response.status_code)] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 if latencies else 0.0

    ok = sum(n for s, n in statuses.items() if s.startswith("2"))
    non2xx = {s: n for s, n in statuses.items() if not s.startswith("2")}
    return {
        "responses": len(latencies),
        "ok": ok,
        "seconds": elapsed,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else 0.0,
        "max_ms": latencies[-1] * 1000 if latencies else 0.0,
        "non2xx": sum(non2xx.values()),
        "statuses": non2xx,
        "io_errors": sum(io_errors.values()),
        "io_error_kinds": dict(io_errors),
    }


class OthersCpu:
    """CPU used by everything outside this benchmark's process tree meanwhile (a shared machine's noise).

    The machine's busy time (``psutil.cpu_times``) less this tree's: this process and its descendants,
    each with the time of the children it has reaped, so a process that ended meanwhile still counts.
    """

    def __init__(self) -> None:
        self.wall, self.busy, self.mine = time.monotonic(), self.machine_busy(), self.tree()

    @staticmethod
    def machine_busy() -> float:
        t = psutil.cpu_times()
        return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))

    @staticmethod
    def tree() -> dict[tuple[int, float], float]:
        me = psutil.Process()
        out = {}
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[(proc.pid, proc.create_time())] = t.user + t.system + t.children_user + t.children_system
        return out

    def percent(self) -> float:
        """Their CPU since construction, in % of one core (so up to 100 x cores)."""
        busy, mine, wall = self.machine_busy(), self.tree(), time.monotonic() - self.wall
        used_by_me = sum(t - self.mine.get(key, 0.0) for key, t in mine.items())
        return max(0.0, 100 * (busy - self.busy - used_by_me) / wall) if wall > 0 else 0.0


def server_cpu_seconds(server: Server) -> float:
    """CPU seconds used so far by the server's processes (itself, its workers, what they reaped)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(server.proc.pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
    return total


def wait_quiet(max_cpu: float, timeout: float) -> float:
    """Wait (up to ``timeout`` s) until other processes use less than ``max_cpu`` % CPU over 2 s."""
    if max_cpu <= 0:
        return 0.0
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        sample = OthersCpu()
        time.sleep(2)
        if sample.percent() < max_cpu:
            break
    return round(time.monotonic() - started, 1)


def load(generator: str, url: str, body_path: Path, concurrency: int, seconds: float, tmp: Path) -> dict:
    if generator == "wrk":
        return run_wrk(url, body_path, concurrency, seconds, tmp)
    return asyncio.run(python_load(url, body_path.read_bytes(), concurrency, seconds))


# --- one server --------------------------------------------------------------------------------------


def request_body(server: str, rows: list[dict]) -> dict:
    return {"dataframe_records": rows} if server == BASELINE else {"rows": rows}


def answered_rows(server: str, payload) -> int:
    """How many predictions a response carries (checks that the server really predicted)."""
    if server == BASELINE:
        return len(payload["predictions"])
    if not all({"prediction", "probability", "model_version"} <= set(item) for item in payload):
        raise RuntimeError(f"unexpected /predict answer: {str(payload)[:300]}")
    return len(payload)


def start_server(
    server: str, args, tmp: Path, tracking_uri: str, ingest_port: int, round_no: int
) -> tuple[Server, str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp / f"{server.replace('+', '-')}-{round_no}.log"
    threads = {"OMP_NUM_THREADS": str(args.omp_threads)} if args.omp_threads else {}
    if server == BASELINE:
        command = [
            str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}/1",
            "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port), "--workers", str(args.workers),
        ]  # fmt: skip
        env = {"MLFLOW_TRACKING_URI": tracking_uri, **threads}
        return Server.start(server, command, env, log_path, tmp), base
    command = [
        str(VENV_BIN / "bentoml"), "serve", args.service,
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {
        "SANDBOX_HOME": str(tmp / "sandbox-home"),
        "SANDBOX_HOST": "127.0.0.1",
        "SANDBOX_MLFLOW_TRACKING_URI": tracking_uri,
        "SANDBOX_MODEL_NAME": MODEL_NAME,
        "SANDBOX_SERVING_WORKERS": str(args.workers),
        "SANDBOX_MONITOR_FEED": "true" if server == SERVICE_FEED else "false",
        "SANDBOX_SERVING_FAST_PATH": "false" if server == SERVICE_SKLEARN else "true",
        "SANDBOX_MONITOR_PORT": str(ingest_port),
        "BENTOML_HOME": str(tmp / "bentoml-home"),
        **threads,
        # A --service outside the repository still imports the project's packages.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.update(shadow_env(server))
    if args.max_batch_size is not None:
        env["SANDBOX_SERVING_MAX_BATCH_SIZE"] = str(args.max_batch_size)
    if args.max_latency_ms is not None:
        env["SANDBOX_SERVING_MAX_LATENCY_MS"] = str(args.max_latency_ms)
    return Server.start(server, command, env, log_path, args.service_dir), base


def connection_split(server: Server, port: int) -> list[int]:
    """Established connections to ``port`` held by each process of the server, largest first.

    Workers share one listening socket and a keep-alive connection stays with the worker that
    accepted it: 16 connections split 16/0 use one worker, 8/8 both. It explains run-to-run jumps.
    """
    counts = []
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(server.proc.pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                n = sum(
                    1
                    for c in proc.net_connections(kind="tcp")
                    if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
                )
                if n:
                    counts.append(n)
    return sorted(counts, reverse=True)


def feed_metrics(base: str) -> dict[str, float]:
    """``sandbox_monitor_feed_records_total`` by outcome, from the service's /metrics."""
    out: dict[str, float] = {}
    with contextlib.suppress(httpx.HTTPError):
        text = httpx.get(base + "/metrics", timeout=10).text
        for match in re.finditer(
            r'^sandbox_monitor_feed_records_total\{[^}]*outcome="([^"]+)"[^}]*\}\s+(\S+)', text, re.M
        ):
            out[match.group(1)] = out.get(match.group(1), 0.0) + float(match.group(2))
    return out


def log_problems(path: Path, limit: int = 8) -> dict:
    """Problem lines in a server log, and the exception line that ends each traceback."""
    lines = path.read_text(errors="replace").splitlines()
    hits = [ln.strip() for ln in lines if LOG_PROBLEM.search(ln)]
    raised = []
    for i, line in enumerate(lines):
        if "Traceback (most recent call last)" in line:
            rest = (
                ln for ln in lines[i + 1 :] if ln and not ln[0].isspace() and not ln.startswith("Traceback")
            )
            raised.append(next(rest, "").strip())
    distinct = list(dict.fromkeys(ln[:240] for ln in hits))
    return {
        "count": len(hits),
        "examples": distinct[:limit],
        "exceptions": dict(Counter(r[:240] for r in raised if r).most_common(limit)),
    }


def bench_server(
    server: str, args, tmp: Path, tracking_uri: str, bodies: dict, ingest, round_no: int
) -> dict:
    """One fresh instance of ``server``: every case, ``--repeats`` runs each (all returned)."""
    proc, base = start_server(server, args, tmp, tracking_uri, ingest.server_port, round_no)
    try:
        ready_path = "/ping" if server == BASELINE else "/readyz"
        ready_s = proc.wait_ready(base + ready_path, args.startup_timeout)
        inference = None
        if server != BASELINE:  # which path the service took for the model, and why (one worker's answer)
            info = httpx.get(base + "/model", timeout=10).json()
            inference = {"inference": info.get("inference"), "reason": info.get("inference_reason")}
        console.print(
            f"[bold]{server}[/] (round {round_no}) ready after {ready_s:.1f}s on {base} (log {proc.log_path})"
            + (f", inference {inference['inference']}: {inference['reason']}" if inference else "")
        )
        url = base + ("/invocations" if server == BASELINE else "/predict")
        for n, rows in bodies["rows"].items():  # smoke: the server answers one prediction per row
            response = httpx.post(url, json=request_body(server, rows), timeout=60)
            if response.status_code != 200 or answered_rows(server, response.json()) != n:
                raise RuntimeError(
                    f"{server} smoke request failed: {response.status_code} {response.text[:300]}"
                )
        cases = []
        for n in args.rows_per_request:
            for concurrency in args.concurrency:
                body_path = bodies["paths"][(server == BASELINE, n)]
                if args.warmup > 0:
                    load(args.generator, url, body_path, concurrency, args.warmup, tmp)
                for _ in range(args.repeats):
                    waited = wait_quiet(args.quiet_cpu, args.quiet_timeout)
                    others, cpu_before = OthersCpu(), server_cpu_seconds(proc)
                    feed_before = feed_metrics(base) if server == SERVICE_FEED else {}
                    split: list[int] = []
                    sampler = threading.Timer(
                        min(2.0, args.duration / 2),
                        lambda out: out.extend(connection_split(proc, int(base.rsplit(":", 1)[1]))),
                        args=(split,),
                    )
                    sampler.start()
                    result = load(args.generator, url, body_path, concurrency, args.duration, tmp)
                    sampler.cancel()
                    cpu_used = server_cpu_seconds(proc) - cpu_before
                    if server == SERVICE_FEED:  # drops are counted when a batch is queued: exact per run
                        feed_after = feed_metrics(base)
                        result["feed_dropped_queue_full"] = int(
                            feed_after.get("dropped_queue_full", 0) - feed_before.get("dropped_queue_full", 0)
                        )
                    result.update(
                        connections_per_worker=split,
                        others_cpu_pct=others.percent(),
                        # The server's own CPU per answered request: far less sensitive to a busy machine than
                        # req/s (what others take shows in waiting, not in the CPU a request costs).
                        cpu_ms_per_request=1000 * cpu_used / result["ok"] if result["ok"] else 0.0,
                        load_avg_1m=os.getloadavg()[0],
                        waited_quiet_s=waited,
                        server=server, concurrency=concurrency, rows=n, round=round_no,
                        req_per_s=result["ok"] / result["seconds"] if result["seconds"] else 0.0,
                        errors=result["non2xx"] + result["io_errors"],
                    )  # fmt: skip
                    console.print(
                        f"  {server:<13} c={concurrency:<3} rows={n:<3} {result['req_per_s']:8.1f} req/s  "
                        f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  errors {result['errors']}  "
                        f"(other processes {result['others_cpu_pct']:.0f}% CPU, connections per worker {split})"
                        + (
                            f", feed records dropped (queue full) {result['feed_dropped_queue_full']}"
                            if "feed_dropped_queue_full" in result
                            else ""
                        )
                    )
                    cases.append(result)
        feed = None
        if server == SERVICE_FEED:
            time.sleep(3)  # let the last batches flush (flush interval 0.5 s, plus retries)
            feed = feed_metrics(base)
        shadow = shadow_counters(base) if server == SERVICE_SHADOW else None
        return {
            "server": server,
            "ready_s": round(ready_s, 1),
            "cases": cases,
            "feed": feed,
            "shadow": shadow,
            "inference": inference,
        }
    finally:
        proc.stop()
        problems = log_problems(proc.log_path)
        if problems["count"]:
            console.print(f"  [yellow]{server} log: {problems['count']} problem line(s)[/], e.g.")
            for line in problems["examples"][:4]:
                console.print(f"    {line}", markup=False)
        merged = args.log_problems.setdefault(server, {"count": 0, "examples": [], "exceptions": {}})
        merged["count"] += problems["count"]
        merged["examples"] = list(dict.fromkeys(merged["examples"] + problems["examples"]))[:8]
        for line, n in problems["exceptions"].items():
            merged["exceptions"][line] = merged["exceptions"].get(line, 0) + n


def representative(runs: list[dict]) -> dict:
    """The run with the median req/s stands for its case (with its own p50/p99); all runs are listed."""
    chosen = dict(sorted(runs, key=lambda r: r["req_per_s"])[len(runs) // 2])
    if len(runs) > 1:
        chosen["runs"] = [
            {"round": r["round"]}
            | {
                k: round(r[k], 2)
                for k in ("req_per_s", "p50_ms", "p99_ms", "cpu_ms_per_request", "others_cpu_pct")
            }
            | {"errors": r["errors"], "connections_per_worker": r["connections_per_worker"]}
            | (
                {"feed_dropped_queue_full": r["feed_dropped_queue_full"]}
                if "feed_dropped_queue_full" in r
                else {}
            )
            for r in runs
        ]
    return chosen


# --- report ------------------------------------------------------------------------------------------


def find(cases: list[dict], server: str, concurrency: int, rows: int) -> dict | None:
    return next(
        (c for c in cases if c["server"] == server and c["concurrency"] == concurrency and c["rows"] == rows),
        None,
    )


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def evaluate_targets(cases: list[dict]) -> dict:
    targets: dict = {}
    base16, base1 = find(cases, BASELINE, 16, 1), find(cases, BASELINE, 1, 1)
    off16, on16 = find(cases, SERVICE, 16, 1), find(cases, SERVICE_FEED, 16, 1)
    for server in (SERVICE, SERVICE_FEED):
        svc16, svc1 = find(cases, server, 16, 1), find(cases, server, 1, 1)
        suffix = "" if server == SERVICE else " (feed on)"
        if base16 and svc16:
            r = ratio(svc16["req_per_s"], base16["req_per_s"])
            targets["a" + suffix] = {
                "what": f"c=16 single-row: {server} req/s >= {TARGET_A_RATIO}x baseline, lower p99, 0 errors",
                "req_per_s_ratio": r,
                "p99_ms": [round(svc16["p99_ms"], 1), round(base16["p99_ms"], 1)],
                "errors": svc16["errors"],
                "holds": bool(
                    r is not None
                    and r >= TARGET_A_RATIO
                    and svc16["p99_ms"] < base16["p99_ms"]
                    and svc16["errors"] == 0
                ),
            }
        if base1 and svc1:
            r = ratio(svc1["p50_ms"], base1["p50_ms"])
            targets["b" + suffix] = {
                "what": f"c=1 single-row: {server} p50 <= {TARGET_B_RATIO}x baseline p50",
                "p50_ratio": r,
                "p50_ms": [round(svc1["p50_ms"], 2), round(base1["p50_ms"], 2)],
                "holds": bool(r is not None and r <= TARGET_B_RATIO),
            }
    today1, svc1 = find(cases, SERVICE_SKLEARN, 1, 1), find(cases, SERVICE, 1, 1)
    if today1 and svc1:
        targets["b (vs today)"] = {
            "what": f"c=1 single-row: {SERVICE} p50 <= {SERVICE_SKLEARN} p50 (the pipeline, as before)",
            "p50_ms": [round(svc1["p50_ms"], 2), round(today1["p50_ms"], 2)],
            "holds": bool(svc1["p50_ms"] <= today1["p50_ms"]),
        }
    if off16 and on16:
        cost = 1 - on16["req_per_s"] / off16["req_per_s"] if off16["req_per_s"] else None
        # Two more views, as the two servers' runs are minutes apart on a shared machine: the cost within each
        # round (adjacent instances), and the extra CPU a request takes with the feed on.
        off_runs = {r["round"]: r for r in off16.get("runs", [])}
        paired = [
            round(1 - r["req_per_s"] / off_runs[r["round"]]["req_per_s"], 3)
            for r in on16.get("runs", [])
            if r["round"] in off_runs and off_runs[r["round"]]["req_per_s"]
        ]
        cpu = (
            on16["cpu_ms_per_request"] / off16["cpu_ms_per_request"] - 1
            if off16["cpu_ms_per_request"]
            else None
        )
        targets["c"] = {
            "what": f"c=16 single-row: feed on costs < {TARGET_C_COST:.0%} req/s vs feed off",
            "cost": None if cost is None else round(cost, 3),
            "cost_per_round": paired,
            "cpu_per_request_cost": None if cpu is None else round(cpu, 3),
            "holds": bool(cost is not None and cost < TARGET_C_COST),
        }
    return targets


def print_report(summary: dict) -> None:
    out = Console(width=WIDTH)
    s = summary["settings"]
    table = Table(
        title=f"serving, {s['workers']} workers, {s['duration_s']:.0f} s per case ({s['generator']}), "
        f"max_batch_size={s['max_batch_size'] or 'default'}, max_latency_ms={s['max_latency_ms'] or 'default'}, "
        f"OMP_NUM_THREADS={s['omp_threads'] or 'unset'}"
        + (
            f", median of {s['rounds'] * s['repeats']} runs ({s['rounds']} instances x {s['repeats']})"
            if s["rounds"] * s["repeats"] > 1
            else ""
        )
        + (f", service {s['service']}" if s["service"] != "services.serving.service:Serving" else "")
    )
    columns = ("server", "concurrency", "rows/request", "req/s", "p50 ms", "p99 ms", "errors", "vs baseline")
    for column in (*columns, "server CPU ms/req", "others' CPU %"):
        table.add_column(column, justify="left" if column == "server" else "right")
    cases = summary["cases"]
    for n in s["rows_per_request"]:
        for concurrency in s["concurrency"]:
            base = find(cases, BASELINE, concurrency, n)
            for server in SERVERS:
                case = find(cases, server, concurrency, n)
                if case is None:
                    continue
                errors = str(case["errors"])
                if case["errors"]:
                    kinds = {**case["statuses"], **case["io_error_kinds"]}
                    errors += " (" + ", ".join(f"{k}×{v}" for k, v in kinds.items()) + ")"
                r = ratio(case["req_per_s"], base["req_per_s"] if base else None)
                table.add_row(
                    server, str(concurrency), str(n), f"{case['req_per_s']:.1f}", f"{case['p50_ms']:.1f}",
                    f"{case['p99_ms']:.1f}", errors, "—" if r is None else f"{r:.2f}x",
                    f"{case['cpu_ms_per_request']:.2f}", f"{case['others_cpu_pct']:.0f}",
                )  # fmt: skip
            table.add_section()
    out.print(table)
    out.print(
        "req/s counts 2xx responses; latency covers every response; errors = non-2xx + I/O errors; "
        "server CPU ms/req = CPU of the server's processes per 2xx response; "
        f"others' CPU % = processes outside this benchmark during the case (of {os.cpu_count()}00%)"
    )
    for case, floor in summary["floor"].items():
        out.print(
            f"floor, {case}: predict_proba {floor['predict_ms']:.2f} ms, with the DataFrame built from the "
            f"JSON rows {floor['frame_and_predict_ms']:.2f} ms, the NumPy path on their columns "
            f"{floor['numpy_ms']:.2f} ms (in-process, median of {floor['calls']})"
        )
    if summary.get("feed"):
        feed = summary["feed"]
        out.print(
            f"monitor feed: /ingest got {feed['ingest_records']} records in {feed['ingest_posts']} POSTs; "
            f"service counters {feed['metrics'] or '(not found in /metrics)'}"
        )
        drops = {
            f"c={c['concurrency']} rows={c['rows']}": [
                r.get("feed_dropped_queue_full") for r in c.get("runs", [c])
            ]
            for c in cases
            if c["server"] == SERVICE_FEED
        }
        out.print(f"monitor feed records dropped because the queue was full, per case and run: {drops}")
    for server, inference in summary["inference"].items():
        out.print(f"{server}: inference {inference['inference']} ({inference['reason']})")
    for server, problems in summary["log_problems"].items():
        if problems["count"]:
            out.print(f"[yellow]{server} log: {problems['count']} problem line(s)[/]")
            for line in problems["examples"]:
                out.print(f"  {line}", markup=False)
            for line, n in problems["exceptions"].items():
                out.print(f"  raised {n}x: {line}", markup=False)
    for key, target in summary["targets"].items():
        verdict = "[green]holds[/]" if target["holds"] else "[red]does NOT hold[/]"
        details = {k: v for k, v in target.items() if k not in ("what", "holds")}
        out.print(f"target {key}: {target['what']}: {verdict} {details}")
    if summary.get("shadow"):
        print_shadow(out, summary["shadow"])
    print(json.dumps(summary), flush=True)


# --- shadow (--shadow) -------------------------------------------------------------------------------


def shadow_env(server: str) -> dict[str, str]:
    """Shadow on only for ``bentoml+shadow`` (which also needs the feed: the sender does the scoring)."""
    if server == SERVICE_SHADOW:
        return {"SANDBOX_MONITOR_FEED": "true", "SANDBOX_SERVING_SHADOW_SHARE": "1"}
    return {"SANDBOX_SERVING_SHADOW_SHARE": "0"}


def register_challenger(tracking_uri: str, n_rows: int) -> str:
    """A second version (other seed and hyperparameters, so its answers differ), given the alias challenger."""
    from mlflow.tracking import MlflowClient

    from pipelines.data import generate_loans
    from pipelines.features import LOAN_SCHEMA
    from pipelines.registry import CHALLENGER, log_and_register
    from pipelines.train import split, train_model

    train, _ = split(generate_loans(n_rows, seed=1), LOAN_SCHEMA, 0.25, 1)
    model = train_model(train, LOAN_SCHEMA, max_iter=100, learning_rate=0.2)
    _, version = log_and_register(
        tracking_uri, model, LOAN_SCHEMA, train, params={"n_rows": n_rows}, metrics={},
        model_name=MODEL_NAME, experiment=EXPERIMENT, tags={"trigger": "benchmark-shadow"},
    )  # fmt: skip
    MlflowClient(tracking_uri).set_registered_model_alias(MODEL_NAME, CHALLENGER, version)
    return version


def shadow_counters(base: str) -> dict[str, float]:
    """Rows the shadow scored, skipped (its time budget spent) and its failures, from /metrics (all workers)."""
    out = {"scored": 0.0, "skipped": 0.0, "failures": 0.0}
    time.sleep(1)  # the sender's last drain (every 0.5 s) is scored and counted
    with contextlib.suppress(httpx.HTTPError):
        text = httpx.get(base + "/metrics", timeout=10).text
        for name, key in (
            ("sandbox_shadow_predictions_total", "scored"),
            ("sandbox_shadow_skipped_rows_total", "skipped"),
            ("sandbox_shadow_failures_total", "failures"),
        ):
            out[key] = sum(float(m.group(1)) for m in re.finditer(rf"^{name}{{[^}}]*}}\s+(\S+)", text, re.M))
    return out


def median_p99(case: dict) -> float:
    """The median of the case's runs' own p99s. A 10-s run's p99 at 64 rows is bimodal here (about 70 or
    140 ms, with the shadow on or off), so the one run with the median req/s is a single draw of it."""
    return round(statistics.median(r["p99_ms"] for r in case.get("runs") or [case]), 2)


def paired_p99s(on: dict, off: dict) -> list[tuple[float, float]]:
    """(on, off) p99 of the same round and repeat: the i-th run of a round on each side."""

    def by_round(case: dict) -> dict[int, list[float]]:
        rounds: dict[int, list[float]] = {}
        for run in case.get("runs", []):
            rounds.setdefault(run["round"], []).append(run["p99_ms"])
        return rounds

    off_rounds = by_round(off)
    return [
        pair for r, p99s in by_round(on).items() for pair in zip(p99s, off_rounds.get(r, []), strict=False)
    ]


def shadow_summary(cases: list[dict], results: list[dict], ingest) -> dict:
    """Shadow off (``bentoml+feed``) against on (``bentoml+shadow``) per case, and target (d)."""
    rows = []
    for case in cases:
        if case["server"] != SERVICE_SHADOW:
            continue
        off = find(cases, SERVICE_FEED, case["concurrency"], case["rows"])
        if off is None:
            continue
        p99_off, p99_on = median_p99(off), median_p99(case)
        rows.append({
            "concurrency": case["concurrency"], "rows": case["rows"],
            "off": {k: round(off[k], 2) for k in ("req_per_s", "p50_ms")} | {"p99_ms": p99_off, "errors": off["errors"]},
            "on": {k: round(case[k], 2) for k in ("req_per_s", "p50_ms")} | {"p99_ms": p99_on, "errors": case["errors"]},
            "req_per_s_ratio": ratio(case["req_per_s"], off["req_per_s"]),
            "p99_ratio": ratio(p99_on, p99_off),
            "p99_ratio_per_round": [ratio(on, o) for on, o in paired_p99s(case, off)],
        })  # fmt: skip
    targets = {
        f"d rows={r['rows']}": {
            "what": f"c=16, {r['rows']} row(s): shadow-on p99 within {TARGET_D_P99:.0%} of shadow off",
            "p99_ms": [r["on"]["p99_ms"], r["off"]["p99_ms"]],
            "holds": bool(r["p99_ratio"] is not None and r["p99_ratio"] <= 1 + TARGET_D_P99),
        }
        for r in rows
        if r["concurrency"] == 16
    }
    counters = [r["shadow"] for r in results if r["server"] == SERVICE_SHADOW and r.get("shadow")]
    return {
        "cases": rows,
        "targets": targets,
        "scored_rows": sum(c["scored"] for c in counters),
        "skipped_rows": sum(c["skipped"] for c in counters),
        "failures": sum(c["failures"] for c in counters),
        "shadowed_records_at_ingest": ingest.shadowed,
    }


def print_shadow(out: Console, shadow: dict) -> None:
    table = Table(
        title="shadow scoring: bentoml+feed (shadow off) vs bentoml+shadow (challenger on every row); "
        "p99: the median of the runs' p99s"
    )
    for column in ("concurrency", "rows/request", "req/s off", "req/s on", "req/s on/off", "p99 ms off",
                   "p99 ms on", "p99 on/off", "p99 on/off per round", "errors off/on"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in shadow["cases"]:
        table.add_row(
            str(r["concurrency"]), str(r["rows"]), f"{r['off']['req_per_s']:.1f}", f"{r['on']['req_per_s']:.1f}",
            f"{r['req_per_s_ratio']}x", f"{r['off']['p99_ms']:.1f}", f"{r['on']['p99_ms']:.1f}",
            f"{r['p99_ratio']}x", str(r["p99_ratio_per_round"] or "—"), f"{r['off']['errors']}/{r['on']['errors']}",
        )  # fmt: skip
    out.print(table)
    out.print(
        f"shadow scored {shadow['scored_rows']:.0f} rows, skipped {shadow['skipped_rows']:.0f} (its time budget "
        f"spent: {shadow['scored_rows'] / max(1.0, shadow['scored_rows'] + shadow['skipped_rows']):.0%} scored), "
        f"{shadow['failures']:.0f} failures; "
        f"/ingest got {shadow['shadowed_records_at_ingest']} records with shadow fields"
    )
    for key, target in shadow["targets"].items():
        verdict = "[green]holds[/]" if target["holds"] else "[red]does NOT hold[/]"
        out.print(f"target {key}: {target['what']}: {verdict} p99 on/off {target['p99_ms']} ms")


# --- main --------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the BentoML serving service against `mlflow models serve` on the same model."
    )
    parser.add_argument("--duration", type=float, default=15, help="seconds measured per case (default 15)")
    parser.add_argument(
        "--warmup", type=float, default=3, help="warm-up seconds before each case (default 3)"
    )
    parser.add_argument("--concurrency", type=int_list, default=[1, 16], help="comma list (default 1,16)")
    parser.add_argument(
        "--rows-per-request",
        type=int_list,
        default=[1, 64],
        help="comma list of rows per body (default 1,64)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="workers of both servers: --workers / SANDBOX_SERVING_WORKERS"
    )
    parser.add_argument(
        "--max-batch-size", type=int, help="SANDBOX_SERVING_MAX_BATCH_SIZE for the service (default: its own)"
    )
    parser.add_argument(
        "--max-latency-ms", type=int, help="SANDBOX_SERVING_MAX_LATENCY_MS for the service (default: its own)"
    )
    parser.add_argument(
        "--omp-threads",
        type=int,
        help="OMP_NUM_THREADS for every server, baseline included (default: unset; the baseline then uses one "
        "thread per core, the service sets 1 itself)",
    )
    parser.add_argument(
        "--service",
        default="services.serving.service:Serving",
        help="bentoml serve target (default %(default)s)",
    )
    parser.add_argument(
        "--service-dir",
        type=Path,
        default=REPO,
        help="working dir of bentoml serve (default: the repository)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="fresh instances of every server, interleaved (default 1)"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="measured runs per case and instance (default 1)"
    )
    parser.add_argument(
        "--quiet-cpu", type=float, default=0,
        help="before each run wait until other processes use < this %% CPU (0 = don't wait; shared machines)",
    )  # fmt: skip
    parser.add_argument(
        "--quiet-timeout", type=float, default=60, help="longest wait for --quiet-cpu, seconds"
    )
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma list, a subset of {','.join(SERVERS)} (default all)",
    )
    parser.add_argument(
        "--load-generator", choices=["auto", "wrk", "python"], default="auto",
        help="wrk if installed (auto), else Python (asyncio + httpx)",
    )  # fmt: skip
    parser.add_argument("--n-rows", type=int, default=20_000, help="training rows (default 20000)")
    parser.add_argument(
        "--floor-calls", type=int, default=300, help="in-process predictions per floor median"
    )
    parser.add_argument("--startup-timeout", type=float, default=180, help="seconds to wait for each server")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (MLflow store, server logs)")
    parser.add_argument(
        "--shadow", action="store_true",
        help=f"also measure shadow scoring: {SERVICE_FEED} (shadow off) against {SERVICE_SHADOW} (a challenger "
        "scoring every row), interleaved; adds both to --servers",
    )  # fmt: skip
    args = parser.parse_args()
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := set(args.servers) - set(SERVERS):
        parser.error(f"unknown servers {sorted(unknown)}; choose from {', '.join(SERVERS)}")
    args.servers = [s for s in SERVERS if s in args.servers]
    if args.shadow:  # shadow off is the feed on without a shadow: both run, in the same rounds
        args.servers = [s for s in args.servers if s != SERVICE_FEED] + [SERVICE_FEED, SERVICE_SHADOW]
    if min(args.duration, args.workers, args.n_rows, args.repeats, args.rounds) <= 0 or args.warmup < 0:
        parser.error(
            "--duration, --workers, --n-rows, --rounds, --repeats must be positive, --warmup not negative"
        )
    if args.load_generator == "wrk" and not shutil.which("wrk"):
        parser.error("--load-generator wrk: wrk is not installed (apt-get install wrk), use auto or python")
    args.generator = (
        "wrk"
        if args.load_generator == "wrk" or (args.load_generator == "auto" and shutil.which("wrk"))
        else "python"
    )
    args.log_problems = {}
    return args


def on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: servers stopped, temp dir removed


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    os.environ.update(BASE_ENV)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    port = free_port()
    tracking_uri = f"http://127.0.0.1:{port}"
    mlflow_server = start_mlflow(tmp, port)
    ingest = None
    try:
        ingest = IngestServer(free_port())
        threading.Thread(target=ingest.serve_forever, name="ingest", daemon=True).start()
        console.print(f"MLflow server pid {mlflow_server.proc.pid} on {tracking_uri} (state in {tmp})")
        console.print(
            f"MLflow healthy after {mlflow_server.wait_ready(tracking_uri + '/health', args.startup_timeout):.1f}s"
        )
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        from services.serving.rows import EXAMPLE_ROW

        trained = train_and_register(tracking_uri, args.n_rows)
        console.print(f"trained + registered {MODEL_NAME} v{trained['version']} in {trained['seconds']:.1f}s")
        pool = trained["rows64"]
        rows = {
            n: ([EXAMPLE_ROW] if n == 1 else [pool[i % len(pool)] for i in range(n)])
            for n in args.rows_per_request
        }
        if args.shadow:
            console.print(
                f"challenger for --shadow: {MODEL_NAME} v{register_challenger(tracking_uri, args.n_rows)}"
            )
        floor = measure_floor(rows, args.floor_calls)
        console.print(f"floor: {json.dumps(floor)}")
        paths = {}
        for n, body_rows in rows.items():
            for baseline in (True, False):
                path = tmp / f"body-{'mlflow' if baseline else 'bentoml'}-{n}.json"
                path.write_text(json.dumps(request_body(BASELINE if baseline else SERVICE, body_rows)))
                paths[(baseline, n)] = path
        bodies = {"rows": rows, "paths": paths}
        # Rounds interleave fresh instances (baseline, service, service+feed, baseline, ...): both the
        # machine's noise and an instance's own luck (which worker got which connection) average out.
        results = [
            bench_server(server, args, tmp, tracking_uri, bodies, ingest, round_no)
            for round_no in range(1, args.rounds + 1)
            for server in args.servers
        ]
        grouped: dict[tuple, list[dict]] = {}
        for result in results:
            for run in result["cases"]:
                grouped.setdefault((run["server"], run["concurrency"], run["rows"]), []).append(run)
        cases = [representative(runs) for runs in grouped.values()]
        feed_counts: dict[str, float] = {}
        for result in results:
            for outcome, n in (result["feed"] or {}).items():
                feed_counts[outcome] = feed_counts.get(outcome, 0.0) + n
        summary = {
            "settings": {
                "workers": args.workers,
                "max_batch_size": args.max_batch_size,
                "max_latency_ms": args.max_latency_ms,
                "omp_threads": args.omp_threads,
                "service": args.service,
                "rounds": args.rounds,
                "repeats": args.repeats,
                "quiet_cpu": args.quiet_cpu,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "concurrency": args.concurrency,
                "rows_per_request": args.rows_per_request,
                "generator": args.generator,
                "cpus": os.cpu_count(),
                "train_rows": args.n_rows,
                "roc_auc": trained["roc_auc"],
            },
            "floor": floor,
            "ready_s": {s: [r["ready_s"] for r in results if r["server"] == s] for s in args.servers},
            "inference": {r["server"]: r["inference"] for r in results if r.get("inference")},
            "cases": [
                {k: round(v, 3) if isinstance(v, float) else v for k, v in case.items()} for case in cases
            ],
            "feed": {"metrics": feed_counts, "ingest_posts": ingest.posts, "ingest_records": ingest.records}
            if SERVICE_FEED in args.servers
            else None,
            "log_problems": args.log_problems,
            "targets": evaluate_targets(cases),
        }
        if args.shadow:
            summary["shadow"] = shadow_summary(cases, results, ingest)
        print_report(summary)
    finally:
        if ingest is not None:
            ingest.shutdown()
            ingest.server_close()
        mlflow_server.stop()
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
