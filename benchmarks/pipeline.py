"""Benchmark the embedded ``train-and-register`` pipeline: kfp.local against plain function calls.

What it measures, against its own throw-away MLflow server (a temp dir, a free 127.0.0.1 port):

- kfp.local: ``sandbox.training.train`` (one child process for the run, one more per step),
  its wall time, each step's seconds and the peak RSS of that child process tree (summed over
  processes, sampled every 0.1 s; the MLflow server is not counted).
- in-process: the same six steps as plain function calls in one fresh Python process, each timed,
  plus the imports that process has to pay (pandas, scikit-learn, MLflow, the project), and its
  peak RSS (``ru_maxrss``, imports included).

Each step also gets its CPU seconds (user + sys): on this shared 2-core machine the load stretches
wall time several-fold, CPU far less, so the CPU ratio says what kfp.local itself costs.

Both runs get the embedded run's environment (``pipelines.run.PIPELINE_ENV``), so the ratio is
the cost of kfp.local alone. It prints a table (step | kfp.local | in-process | ratio), kfp.local's
overhead ratio, the two targets (kfp.local at most 1.5x in-process, and under 15 s) and the same
numbers as one JSON line at the end.

Run from the repository root:

    .venv/bin/python benchmarks/pipeline.py [--n-rows 20000] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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

TARGET_SECONDS = 15.0
TARGET_RATIO = 1.5
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
    """Max over time of the summed RSS of this process's descendants, minus the excluded trees; and
    the CPU seconds of each step's process as last seen (``step_cpu``: up to one interval short)."""

    def __init__(self, exclude_pids: set[int], interval: float = 0.1):
        super().__init__(daemon=True)
        self.exclude_pids = exclude_pids
        self.interval = interval
        self.peak_bytes = 0
        self.peak_processes = 0
        self._halt = threading.Event()
        self._steps: dict[int, str | None] = {}  # pid -> the step it runs (None: not a step)
        self._cpu: dict[int, float] = {}

    def step_of(self, proc: psutil.Process) -> str | None:
        if proc.pid not in self._steps:
            argv = proc.cmdline()
            is_step = "kfp.dsl.executor_main" in argv and "--function_to_execute" in argv
            self._steps[proc.pid] = argv[argv.index("--function_to_execute") + 1] if is_step else None
        return self._steps[proc.pid]

    @property
    def step_cpu(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, seconds in self._cpu.items():
            step = self._steps[pid].replace("_", "-")  # the function's name -> the task's
            out[step] = out.get(step, 0.0) + seconds
        return out

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
                if self.step_of(child):
                    cpu = child.cpu_times()
                    self._cpu[child.pid] = cpu.user + cpu.system
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, count

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def children_cpu() -> float:
    """CPU seconds (user + sys) of this process's finished children and theirs: on a shared machine
    the load stretches wall time, far less the CPU a run needs (the MLflow server, still running,
    is not counted)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_kfp(n_rows: int, tmp: Path, port: int, mlflow_pid: int) -> dict:
    from sandbox.settings import Settings
    from sandbox.training import train, train_params

    settings = Settings(home=tmp, mlflow_port=port, mlflow_tracking_uri=None)

    def on_step(step: str, state: str, seconds: float) -> None:
        if state != "running":
            console.print(f"  kfp.local  {step:<14} {state} ({seconds:.2f}s)")

    sampler = TreeRssSampler(exclude_pids={mlflow_pid})
    sampler.start()
    cpu_before = children_cpu()
    started = time.perf_counter()
    try:
        result = train(train_params(settings, n_rows=n_rows), settings, on_step)
    finally:
        total = time.perf_counter() - started
        sampler.stop()
    return {
        "total_s": total,
        "cpu_s": children_cpu() - cpu_before,
        "steps": result.step_seconds,
        "steps_cpu": sampler.step_cpu,
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
    cpu: dict[str, float] = {}  # CPU seconds of this process (every thread) in each step
    begin = time.perf_counter()

    started, cpu_started = time.perf_counter(), time.process_time()
    import mlflow.sklearn  # noqa: F401
    import pandas  # noqa: F401
    import sklearn  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401

    from pipelines.steps import run_steps
    from sandbox.settings import Settings
    from sandbox.training import train_params

    timings[IMPORTS_ROW], cpu[IMPORTS_ROW] = time.perf_counter() - started, time.process_time() - cpu_started

    settings = Settings(home=tmp, mlflow_port=port, mlflow_tracking_uri=None)
    params = train_params(
        settings, n_rows=n_rows, model_name=INPROCESS_MODEL, experiment=INPROCESS_EXPERIMENT
    )
    cpu_last = time.process_time()

    def timed(step: str, seconds: float) -> None:
        nonlocal cpu_last
        timings[step], cpu[step], cpu_last = seconds, time.process_time() - cpu_last, time.process_time()

    result = run_steps(params, timed=timed)
    total = time.perf_counter() - begin
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    report = {
        "total_s": total,
        "steps": timings,
        "steps_cpu": cpu,
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
    from pipelines.run import PIPELINE_ENV

    env = {**PIPELINE_ENV, **os.environ}  # what the embedded run's steps get, so only kfp.local differs
    cpu_before = children_cpu()
    with log_path.open("w") as log:
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(WORKER_MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"in-process run failed ({proc.returncode}):\n{proc.stdout}\n{tail(log_path)}")
    return {**json.loads(lines[-1][len(WORKER_MARKER) :]), "cpu_s": children_cpu() - cpu_before}


# --- report ------------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def summarize(n_rows: int, kfp: dict, inproc: dict) -> dict:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    steps: dict[str, dict] = {
        IMPORTS_ROW: {
            "kfp_s": None, "inprocess_s": rounded(inproc["steps"][IMPORTS_ROW]), "ratio": None,
            "kfp_cpu_s": None, "inprocess_cpu_s": rounded(inproc["steps_cpu"][IMPORTS_ROW]),
        }
    }  # fmt: skip
    for step in STEPS:
        k, i = kfp["steps"].get(step), inproc["steps"].get(step)
        steps[step] = {
            "kfp_s": rounded(k),
            "inprocess_s": rounded(i),
            "ratio": ratio(k, i),
            "kfp_cpu_s": rounded(kfp["steps_cpu"].get(step)),
            "inprocess_cpu_s": rounded(inproc["steps_cpu"].get(step)),
        }
    outside = kfp["total_s"] - sum(kfp["steps"].get(step, 0.0) for step in STEPS)
    steps[OUTSIDE_ROW] = {
        "kfp_s": round(outside, 2), "inprocess_s": None, "ratio": None,
        "kfp_cpu_s": round(kfp["cpu_s"] - sum(kfp["steps_cpu"].values()), 2), "inprocess_cpu_s": None,
    }  # fmt: skip
    return {
        "n_rows": n_rows,
        "steps": steps,
        "total_kfp_s": round(kfp["total_s"], 2),
        "total_inprocess_s": round(inproc["total_s"], 2),
        "overhead_ratio": ratio(kfp["total_s"], inproc["total_s"]),
        "cpu_kfp_s": round(kfp["cpu_s"], 2),
        "cpu_inprocess_s": round(inproc["cpu_s"], 2),
        "cpu_ratio": ratio(kfp["cpu_s"], inproc["cpu_s"]),
        "peak_rss_mb_kfp": round(kfp["peak_rss_mb"], 1),
        "peak_rss_mb_inprocess": round(inproc["peak_rss_mb"], 1),
        "target_s": TARGET_SECONDS,
        "target_met": kfp["total_s"] < TARGET_SECONDS,
        "target_ratio": TARGET_RATIO,
        "ratio_met": kfp["total_s"] <= TARGET_RATIO * inproc["total_s"],
    }


def print_report(summary: dict, kfp: dict, inproc: dict) -> None:
    out = Console()
    table = Table(title=f"train-and-register, {summary['n_rows']} rows")
    table.add_column("step")
    table.add_column("kfp.local (s)", justify="right")
    table.add_column("in-process (s)", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("kfp.local CPU (s)", justify="right")
    table.add_column("in-process CPU (s)", justify="right")
    for step, row in summary["steps"].items():
        kfp_cell = fmt(row["kfp_s"])
        if step == IMPORTS_ROW:
            kfp_cell = "(in every step)"
        elif step == OUTSIDE_ROW:
            step = f"{OUTSIDE_ROW} (start-up, hand-offs)"
        table.add_row(
            step, kfp_cell, fmt(row["inprocess_s"]), fmt(row["ratio"], suffix="x"),
            fmt(row["kfp_cpu_s"]), fmt(row["inprocess_cpu_s"]),
        )  # fmt: skip
    table.add_section()
    table.add_row(
        "[bold]total[/]",
        f"[bold]{summary['total_kfp_s']:.2f}[/]",
        f"[bold]{summary['total_inprocess_s']:.2f}[/]",
        f"[bold]{fmt(summary['overhead_ratio'], suffix='x')}[/]",
        f"[bold]{summary['cpu_kfp_s']:.2f}[/]",
        f"[bold]{summary['cpu_inprocess_s']:.2f}[/] ({fmt(summary['cpu_ratio'], suffix='x')})",
    )
    table.add_row(
        "peak RSS (MB)",
        f"{summary['peak_rss_mb_kfp']:.0f}",
        f"{summary['peak_rss_mb_inprocess']:.0f}",
        fmt(ratio(summary["peak_rss_mb_kfp"], summary["peak_rss_mb_inprocess"]), suffix="x"),
    )
    out.print(table)
    out.print(
        f"load average (1 min) before / after: {summary['load_average'][0]} / {summary['load_average'][1]}"
    )
    out.print(
        "CPU: user + sys of every process of the run (the MLflow server excluded); a step's kfp.local CPU "
        "is its process as last sampled (0.1 s), the rest of the run's CPU is 'outside the steps'."
    )
    out.print(
        f"kfp.local peak RSS: sum over up to {kfp['peak_processes']} processes of the run's tree "
        "(shared pages counted per process), MLflow server excluded; in-process: ru_maxrss of one "
        "process, imports included."
    )
    out.print(
        f"results: kfp.local v{kfp['model_version']} roc_auc={kfp['roc_auc']} promoted={kfp['promoted']}; "
        f"in-process v{inproc['model_version']} roc_auc={inproc['roc_auc']} promoted={inproc['promoted']}"
    )

    def verdict(met: bool) -> str:
        return "[green]met[/]" if met else "[red]NOT met[/]"

    out.print(
        f"target 'kfp.local at most {TARGET_RATIO}x in-process': {verdict(summary['ratio_met'])} "
        f"({fmt(summary['overhead_ratio'], suffix='x')})"
    )
    out.print(
        f"target 'whole embedded run under {TARGET_SECONDS:.0f} s': {verdict(summary['target_met'])} "
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

    load_before = os.getloadavg()[0]
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
        summary = summarize(args.n_rows, kfp, inproc)
        # The machine is shared: the 1-minute load before and after says how far to trust the seconds.
        summary["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        print_report(summary, kfp, inproc)
    finally:
        stop_process_group(server)
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
