"""Benchmark the embedded ``train-and-register`` pipeline: kfp.local against plain function calls.

What it measures, against its own throw-away MLflow server (a temp dir, a free 127.0.0.1 port):

- kfp.local: ``sandbox.training.train`` (one child process for the run, one more per step),
  its wall time, each step's seconds and the peak RSS of that child process tree (summed over
  processes, sampled every 0.1 s; the MLflow server is not counted).
- in-process: the same six steps as plain function calls in one fresh Python process, each timed,
  plus the imports that process has to pay (pandas, scikit-learn, MLflow, the project), and its
  peak RSS (``ru_maxrss``, imports included).

It prints a table (step | kfp.local | in-process | ratio), kfp.local's overhead ratio, whether the
whole embedded run stayed under 20 s, and the same numbers as one JSON line at the end.

Run from the repository root:

    .venv/bin/python benchmarks/pipeline.py [--n-rows 20000] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

TARGET_SECONDS = 20.0
INPROCESS_MODEL = "bench-inprocess"
INPROCESS_EXPERIMENT = "bench-inprocess"
WORKER_MARKER = "BENCH_INPROCESS "
IMPORTS_ROW = "imports (one process)"
OUTSIDE_ROW = "outside the steps"
# kfp.local task name -> what the in-process run calls for it.
STEPS = {
    "load-data": "load_data + apply_scenario",
    "validate-data": "validate_frame + split",
    "train": "train_model",
    "evaluate": "evaluate_model",
    "register": "log_and_register",
    "promote": "promote",
}

console = Console(stderr=True)
REPO = Path(__file__).resolve().parent.parent
# tests.support: the one place of ports, waits, process groups and MLflow. Imported in the functions
# that use it, not here: the in-process worker imports this file and must pay its own imports.
sys.path.insert(0, str(REPO))


# --- kfp.local ---------------------------------------------------------------------------------------


class TreeRssSampler(threading.Thread):
    """Max over time of the summed RSS of this process's descendants, minus the excluded trees."""

    def __init__(self, exclude_pids: set[int], interval: float = 0.1):
        super().__init__(daemon=True)
        self.exclude_pids = exclude_pids
        self.interval = interval
        self.peak_bytes = 0
        self.peak_processes = 0
        self._halt = threading.Event()

    def excluded(self) -> set[int]:
        pids = set(self.exclude_pids)
        for pid in self.exclude_pids:
            with contextlib.suppress(psutil.Error):
                pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        return pids

    def sample(self) -> None:
        skip = self.excluded()
        total, count = 0, 0
        for child in psutil.Process().children(recursive=True):
            if child.pid in skip:
                continue
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
                count += 1
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, count

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_kfp(n_rows: int, tmp: Path, port: int, mlflow_pid: int) -> dict:
    from sandbox.settings import Settings
    from sandbox.training import train, train_params

    settings = Settings(home=tmp, mlflow_port=port, mlflow_tracking_uri=None)

    def on_step(step: str, state: str, seconds: float) -> None:
        if state != "running":
            console.print(f"  kfp.local  {step:<14} {state} ({seconds:.2f}s)")

    sampler = TreeRssSampler(exclude_pids={mlflow_pid})
    sampler.start()
    started = time.perf_counter()
    try:
        result = train(train_params(settings, n_rows=n_rows), settings, on_step)
    finally:
        total = time.perf_counter() - started
        sampler.stop()
    return {
        "total_s": total,
        "steps": result.step_seconds,
        "peak_rss_mb": sampler.peak_bytes / 2**20,
        "peak_processes": sampler.peak_processes,
        "promoted": result.promoted,
        "model_version": result.model_version,
        "roc_auc": result.metrics.get("roc_auc"),
        "log": result.log,
    }


# --- in-process --------------------------------------------------------------------------------------


def inprocess_worker(n_rows: int, tmp: Path, port: int) -> None:
    """The six steps as plain calls in this (fresh) process (``pipelines.steps``); one marked JSON line."""
    timings: dict[str, float] = {}
    begin = time.perf_counter()

    started = time.perf_counter()
    import mlflow.sklearn  # noqa: F401
    import pandas  # noqa: F401
    import sklearn  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401

    from pipelines.steps import run_steps
    from sandbox.settings import Settings
    from sandbox.training import train_params

    timings[IMPORTS_ROW] = time.perf_counter() - started

    settings = Settings(home=tmp, mlflow_port=port, mlflow_tracking_uri=None)
    params = train_params(
        settings, n_rows=n_rows, model_name=INPROCESS_MODEL, experiment=INPROCESS_EXPERIMENT
    )
    result = run_steps(params, timed=timings.__setitem__)
    total = time.perf_counter() - begin
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    report = {
        "total_s": total,
        "steps": timings,
        "peak_rss_mb": peak_kib / 1024,
        "promoted": result.promoted,
        "model_version": result.model_version,
        "roc_auc": result.metrics.get("roc_auc"),
    }
    print(WORKER_MARKER + json.dumps(report), flush=True)


def run_inprocess(n_rows: int, tmp: Path, port: int) -> dict:
    """Run ``inprocess_worker`` in a fresh interpreter: it pays its own imports, its RSS is its own."""
    from tests.support.processes import tail

    log_path = tmp / "inprocess.log"
    command = [
        sys.executable, str(Path(__file__).resolve()), "--inprocess-worker",
        "--n-rows", str(n_rows), "--home", str(tmp), "--port", str(port),
    ]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(WORKER_MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"in-process run failed ({proc.returncode}):\n{proc.stdout}\n{tail(log_path)}")
    return json.loads(lines[-1][len(WORKER_MARKER) :])


# --- report ------------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def summarize(n_rows: int, kfp: dict, inproc: dict) -> dict:
    steps: dict[str, dict] = {
        IMPORTS_ROW: {"kfp_s": None, "inprocess_s": round(inproc["steps"][IMPORTS_ROW], 2), "ratio": None}
    }
    for step in STEPS:
        k, i = kfp["steps"].get(step), inproc["steps"].get(step)
        steps[step] = {
            "kfp_s": None if k is None else round(k, 2),
            "inprocess_s": None if i is None else round(i, 2),
            "ratio": ratio(k, i),
        }
    outside = kfp["total_s"] - sum(kfp["steps"].get(step, 0.0) for step in STEPS)
    steps[OUTSIDE_ROW] = {"kfp_s": round(outside, 2), "inprocess_s": None, "ratio": None}
    return {
        "n_rows": n_rows,
        "steps": steps,
        "total_kfp_s": round(kfp["total_s"], 2),
        "total_inprocess_s": round(inproc["total_s"], 2),
        "overhead_ratio": ratio(kfp["total_s"], inproc["total_s"]),
        "peak_rss_mb_kfp": round(kfp["peak_rss_mb"], 1),
        "peak_rss_mb_inprocess": round(inproc["peak_rss_mb"], 1),
        "target_s": TARGET_SECONDS,
        "target_met": kfp["total_s"] < TARGET_SECONDS,
    }


def print_report(summary: dict, kfp: dict, inproc: dict) -> None:
    out = Console()
    table = Table(title=f"train-and-register, {summary['n_rows']} rows")
    table.add_column("step")
    table.add_column("kfp.local (s)", justify="right")
    table.add_column("in-process (s)", justify="right")
    table.add_column("ratio", justify="right")
    for step, row in summary["steps"].items():
        kfp_cell = fmt(row["kfp_s"])
        if step == IMPORTS_ROW:
            kfp_cell = "(in every step)"
        elif step == OUTSIDE_ROW:
            step = f"{OUTSIDE_ROW} (start-up, hand-offs)"
        table.add_row(step, kfp_cell, fmt(row["inprocess_s"]), fmt(row["ratio"], suffix="x"))
    table.add_section()
    table.add_row(
        "[bold]total[/]",
        f"[bold]{summary['total_kfp_s']:.2f}[/]",
        f"[bold]{summary['total_inprocess_s']:.2f}[/]",
        f"[bold]{fmt(summary['overhead_ratio'], suffix='x')}[/]",
    )
    table.add_row(
        "peak RSS (MB)",
        f"{summary['peak_rss_mb_kfp']:.0f}",
        f"{summary['peak_rss_mb_inprocess']:.0f}",
        fmt(ratio(summary["peak_rss_mb_kfp"], summary["peak_rss_mb_inprocess"]), suffix="x"),
    )
    out.print(table)
    out.print(
        f"kfp.local peak RSS: sum over up to {kfp['peak_processes']} processes of the run's tree "
        "(shared pages counted per process), MLflow server excluded; in-process: ru_maxrss of one "
        "process, imports included."
    )
    out.print(
        f"results: kfp.local v{kfp['model_version']} roc_auc={kfp['roc_auc']} promoted={kfp['promoted']}; "
        f"in-process v{inproc['model_version']} roc_auc={inproc['roc_auc']} promoted={inproc['promoted']}"
    )
    out.print(f"overhead of kfp.local: {fmt(summary['overhead_ratio'], suffix='x')} the in-process time")
    verdict = "[green]met[/]" if summary["target_met"] else "[red]NOT met[/]"
    out.print(
        f"target 'whole embedded run under {TARGET_SECONDS:.0f} s': {verdict} "
        f"({summary['total_kfp_s']:.2f} s)"
    )
    print(json.dumps(summary), flush=True)


# --- main --------------------------------------------------------------------------------------------


def warm_up() -> float:
    """Import the heavy packages once in a throw-away process, so neither run pays a cold file cache."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import pandas, pyarrow, sklearn.ensemble, mlflow.sklearn, kfp.local"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Benchmark train-and-register: kfp.local (embedded) against the same steps in one process."
    )
    parser.add_argument("--n-rows", type=int, default=20_000, help="rows of synthetic data (default 20000)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (MLflow store, logs)")
    parser.add_argument("--startup-timeout", type=float, default=180, help="seconds to wait for MLflow")
    parser.add_argument("--inprocess-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.n_rows <= 0:
        parser.error("--n-rows must be positive")
    if args.inprocess_worker:
        inprocess_worker(args.n_rows, args.home, args.port)
        return

    from tests.support.processes import free_port, stop_process_group, wait_http
    from tests.support.servers import start_mlflow

    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_log = tmp / "mlflow-server.log"
    server = start_mlflow(tmp, port, mlflow_log)
    try:
        console.print(f"MLflow server pid {server.pid} on {url} (state in {tmp})")
        console.print(f"warm-up imports in a throw-away process: {warm_up():.1f}s")
        console.print(
            f"MLflow healthy after {wait_http(url + '/health', args.startup_timeout, server, mlflow_log):.1f}s"
        )
        console.print("kfp.local run ...")
        kfp = run_kfp(args.n_rows, tmp, port, server.pid)
        console.print(f"  kfp.local total {kfp['total_s']:.2f}s")
        console.print("in-process run ...")
        inproc = run_inprocess(args.n_rows, tmp, port)
        console.print(f"  in-process total {inproc['total_s']:.2f}s")
        print_report(summarize(args.n_rows, kfp, inproc), kfp, inproc)
    finally:
        stop_process_group(server)
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
