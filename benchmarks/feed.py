"""Benchmark the serving -> monitor feed against the real monitor (its SQLite store), under load.

Issue 10, item 8: the feed's 2,000-record POSTs had only been measured against a stand-in that
answers at once (benchmarks/serving.py, ``bentoml+feed``). Here, all on 127.0.0.1 in a temp dir:

1. a throw-away MLflow server and the default model as ``bench-serving`` v1, champion
   (``benchmarks/serving.py``'s ``start_mlflow`` and ``train_and_register``);
2. the real monitor (``uvicorn services.monitor.app:create_app --factory``, SQLite in WAL mode,
   its default evaluation interval) behind a small timing proxy: every ``POST /ingest`` the feed
   makes goes through it, so the monitor's ingest latency is timed per call, as the feed sees it
   (the proxy forwards bytes as they are; the monitor exports no latency histogram of its own);
3. ``bentoml serve services.serving.service:Serving`` with the feed on, pointed at the proxy
   (``start_server`` of benchmarks/serving.py, ``bentoml+feed``);
4. load: 64-row ``/predict`` bodies at concurrency 16 for ``--duration`` s (``wrk`` if installed,
   else the Python client: ``load`` of benchmarks/serving.py), then a bounded wait until the feed
   has delivered or dropped every served record: what the monitor could not take during the load
   waits in the feed's outbox (memory, then its spool on disk) and goes out after.

It prints records acknowledged per second (by the monitor: 2xx on ``/ingest``) during the load and
over load + drain, the drain time, the records spooled, the feed's retries and drops (target: 0
dropped), the monitor's ingest latency (p50/p99/max per POST), the records the monitor's store
holds against those acknowledged and the rows served (equal, but for the requests in flight when
wrk stops: served and fed, not counted by wrk), and one JSON line at the end.

    .venv/bin/python benchmarks/feed.py [--duration 30] [--concurrency 16] [--rows 64] [--workers 2]
        [--load-generator auto|wrk|python] [--keep]

About 2-4 minutes with the defaults (servers take 20-40 s to start here; the spool drains ~30 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import httpx
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # benchmarks/ as a namespace package: one set of helpers, not copies

from benchmarks.serving import (  # noqa: E402
    MODEL_NAME,
    SERVICE_FEED,
    VENV_BIN,
    OthersCpu,
    Server,
    console,
    feed_metrics,
    load,
    log_problems,
    request_body,
    server_cpu_seconds,
    start_mlflow,
    start_server,
    train_and_register,
)
from sandbox.local_stack import BASE_ENV  # noqa: E402
from tests.support.processes import free_port  # noqa: E402

MAX_DURATION_S = 300.0


class TimingProxy(ThreadingHTTPServer):
    """Forwards ``POST /ingest`` to the monitor and times each call (status, seconds, records)."""

    daemon_threads = True

    def __init__(self, port: int, upstream: str):
        super().__init__(("127.0.0.1", port), ProxyHandler)
        self.upstream = upstream.rstrip("/")
        self.client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64))
        self.lock = threading.Lock()
        self.calls: list[tuple[int, float, int]] = []  # (status, seconds, records)


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        server: TimingProxy = self.server  # type: ignore[assignment]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        # The records in the body, counted cheaply: every record carries one request_id.
        records = body.count(b'"request_id"')
        started = time.perf_counter()
        try:
            response = server.client.post(
                server.upstream + self.path, content=body, headers={"content-type": "application/json"}
            )
            status, reply = response.status_code, response.content
        except httpx.HTTPError as exc:
            status, reply = 502, json.dumps({"error": f"monitor unreachable: {exc}"}).encode()
        seconds = time.perf_counter() - started
        with server.lock:
            server.calls.append((status, seconds, records))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        pass


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def monitor_records(monitor: str) -> int:
    return int(httpx.get(f"{monitor}/api/status", timeout=10).json()["store"]["records"])


def start_monitor(tmp: Path, port: int, tracking_uri: str) -> Server:
    command = [
        str(VENV_BIN / "uvicorn"), "services.monitor.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--app-dir", str(REPO),
    ]  # fmt: skip
    env = {
        "SANDBOX_HOME": str(tmp / "sandbox-home"),
        "SANDBOX_MLFLOW_TRACKING_URI": tracking_uri,
        "SANDBOX_MODEL_NAME": MODEL_NAME,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return Server.start("monitor", command, env, tmp / "monitor.log", REPO)


def wait_delivered(base: str, served: int, timeout: float) -> tuple[dict, float]:
    """Poll serving's feed counters until sent + dropped covers every served record and they stopped
    moving (bounded): requests in flight when the load generator stops are served, fed and stored,
    but not in its count, so "covers" alone could read the counters before their batch is acknowledged."""
    started = time.monotonic()
    counts: dict = {}
    last = None
    while time.monotonic() - started < timeout:
        counts = feed_metrics(base)
        done = (
            counts.get("sent", 0)
            + counts.get("dropped_undeliverable", 0)
            + counts.get("dropped_queue_full", 0)
        )
        if done >= served and counts == last:
            break
        last = counts
        time.sleep(1.0)  # twice the feed's flush interval: a batch on its way shows by the next poll
    return counts, time.monotonic() - started


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="serving -> real monitor under load: records acknowledged/s, retries, drops, ingest p99.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=float, default=30.0, help=f"seconds of load (at most {MAX_DURATION_S:g})"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rows", type=int, default=64, help="rows per /predict request")
    parser.add_argument("--workers", type=int, default=2, help="BentoML workers")
    parser.add_argument("--n-rows", type=int, default=20_000, help="training rows of the model")
    parser.add_argument(
        "--drain-timeout", type=float, default=240.0, help="max seconds to wait for the feed (and its spool)"
    )
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument("--load-generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, the monitor's DB)")
    args = parser.parse_args()
    if not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--duration must be in (0, {MAX_DURATION_S:g}]")
    if not 1 <= args.concurrency <= 256 or not 1 <= args.rows <= 1000:
        parser.error("--concurrency must be 1..256 and --rows 1..1000")
    if args.load_generator == "wrk" and not shutil.which("wrk"):
        parser.error("--load-generator wrk: wrk is not installed")
    auto_wrk = args.load_generator == "auto" and shutil.which("wrk")
    args.generator = "wrk" if args.load_generator == "wrk" or auto_wrk else "python"
    return args


def print_report(summary: dict) -> None:
    table = Table(
        title=f"serving -> real monitor: {summary['rows']}-row requests, concurrency {summary['concurrency']}"
    )
    for column in ("measure", "value"):
        table.add_column(column)
    for key, value in summary["figures"].items():
        table.add_row(key, str(value))
    console.print(table)
    verdict = "[green]holds[/]" if summary["target_zero_dropped"] else "[red]missed[/]"
    console.print(f"target 0 dropped, store == acknowledged >= served: {verdict}")
    print(json.dumps(summary))


def on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally block: servers stopped, temp dir removed


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    os.environ.update(BASE_ENV)
    tmp = Path(tempfile.mkdtemp(prefix="bench-feed-"))
    tracking_uri = f"http://127.0.0.1:{free_port()}"
    servers: list[Server] = [start_mlflow(tmp, int(tracking_uri.rsplit(":", 1)[1]))]
    proxy = None
    try:
        servers[0].wait_ready(tracking_uri + "/health", args.startup_timeout)
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        trained = train_and_register(tracking_uri, args.n_rows)
        console.print(f"trained + registered {MODEL_NAME} v{trained['version']} in {trained['seconds']:.1f}s")

        monitor_port = free_port()
        monitor = f"http://127.0.0.1:{monitor_port}"
        servers.append(start_monitor(tmp, monitor_port, tracking_uri))
        servers[-1].wait_ready(monitor + "/healthz", args.startup_timeout)
        proxy = TimingProxy(free_port(), monitor)
        threading.Thread(target=proxy.serve_forever, name="ingest-proxy", daemon=True).start()

        options = SimpleNamespace(
            workers=args.workers, omp_threads=None, max_batch_size=None, max_latency_ms=None,
            service="services.serving.service:Serving", service_dir=REPO,
        )  # fmt: skip
        serving, base = start_server(SERVICE_FEED, options, tmp, tracking_uri, proxy.server_port, 1)
        servers.append(serving)
        ready = serving.wait_ready(base + "/readyz", args.startup_timeout)
        console.print(
            f"serving ready after {ready:.1f}s on {base}, feed -> proxy :{proxy.server_port} -> {monitor}"
        )

        pool = trained["rows64"]
        body = tmp / "body.json"
        body.write_text(
            json.dumps(request_body(SERVICE_FEED, [pool[i % len(pool)] for i in range(args.rows)]))
        )
        url = base + "/predict"
        if args.warmup > 0:  # and its records delivered, so the measured counts start from rest
            warm = load(args.generator, url, body, args.concurrency, args.warmup, tmp)
            wait_delivered(base, warm["ok"] * args.rows, args.drain_timeout)
        before = feed_metrics(base)
        stored_before = monitor_records(monitor)
        with proxy.lock:
            proxy.calls.clear()
        # CPU of each side meanwhile: on 2 cores serving, the load generator and the monitor compete.
        cpu_before = {s.name: server_cpu_seconds(s) for s in servers}
        others = OthersCpu()
        result = load(args.generator, url, body, args.concurrency, args.duration, tmp)
        acknowledged_in_load = feed_metrics(base).get("sent", 0) - before.get("sent", 0)
        served = result["ok"] * args.rows
        counts, drain = wait_delivered(base, before.get("sent", 0) + served, args.drain_timeout)
        cpu = {name: server_cpu_seconds(s) - cpu_before[name] for name, s in ((s.name, s) for s in servers)}
        others_pct = others.percent()
        delta = {k: counts.get(k, 0) - before.get(k, 0) for k in set(counts) | set(before)}
        stored = monitor_records(monitor) - stored_before
        with proxy.lock:
            calls = list(proxy.calls)
        latencies = [seconds * 1000 for status, seconds, _ in calls if status < 300]
        queue_full, undeliverable = (
            int(delta.get(k, 0)) for k in ("dropped_queue_full", "dropped_undeliverable")
        )
        dropped = queue_full + undeliverable
        acknowledged = int(delta.get("sent", 0))
        seconds = result["seconds"] + drain
        figures = {
            "predict req/s (2xx)": round(result["ok"] / result["seconds"], 1),
            "predict p99 ms": round(result["p99_ms"], 1),
            "predict errors": result["non2xx"] + result["io_errors"],
            "rows served": served,
            "records acknowledged": acknowledged,
            "records acknowledged/s (load + drain)": round(acknowledged / seconds, 1),
            "feed drain after load s": round(drain, 1),
            "records acknowledged/s during load": round(acknowledged_in_load / result["seconds"], 1),
            "spooled to disk (records)": int(delta.get("spooled", 0)),
            "retries (records)": int(delta.get("retried", 0)),
            "dropped (records)": f"{dropped} ({queue_full} queue full, {undeliverable} undeliverable)",
            "monitor store: new records": stored,
            "ingest POSTs": len(calls),
            "records per POST (mean)": round(statistics.fmean([n for *_, n in calls]), 1) if calls else 0,
            "ingest non-2xx": sum(1 for status, *_ in calls if status >= 300),
            "ingest p50 ms": round(percentile(latencies, 50), 1),
            "ingest p99 ms": round(percentile(latencies, 99), 1),
            "ingest max ms": round(max(latencies, default=0.0), 1),
            "monitor CPU ms per 1,000 records": round(1e6 * cpu["monitor"] / acknowledged, 1)
            if acknowledged
            else 0,
            "CPU s (serving / monitor / others)": f"{cpu['bentoml+feed']:.1f} / {cpu['monitor']:.1f} / "
            f"{others_pct * seconds / 100:.1f} over {seconds:.1f} s",
        }
        summary = {
            "rows": args.rows,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "workers": args.workers,
            "generator": args.generator,
            "cpus": os.cpu_count(),
            "figures": figures,
            "dropped": dropped,
            # wrk does not count the requests in flight when it stops, though they are served and fed:
            # at most one request a connection more than it counted.
            "target_zero_dropped": dropped == 0
            and stored == acknowledged
            and served <= acknowledged <= served + args.concurrency * args.rows,
            "log_problems": {s.name: log_problems(s.log_path)["count"] for s in servers},
        }
        print_report(summary)
    finally:
        if proxy is not None:
            proxy.shutdown()
            proxy.server_close()
        for server in reversed(servers):
            with contextlib.suppress(Exception):
                server.stop()
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
