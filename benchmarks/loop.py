"""N fresh `sandbox demo` runs in a row, optionally with cores kept busy: does the story hold every time?

Each run gets a stack of its own (a temp state dir, a free 127.0.0.1 port for every service), runs
``sandbox demo --json`` and stops the stack. ``--busy-cores K`` keeps K cores busy for the whole
run with bounded CPU hogs (plain spinning processes, killed at the end and after ``--timeout``
at the latest), as a laptop busy with other work would be.

Prints per run: completed, time to detect / retrain / shadow / recover / bake, requests and failed
requests, the failed step; then the success rate and the worst recovery. Targets on a 2-core
machine: 5 of 5 with ``--busy-cores 1``, 0 failed requests in every run, recovery under 180 s in
every run. ``--story bad-release`` tries that story instead (its "recover" is the live gate's
rejection; "bake" and "rollback" are the late regression's). ``--same-home``: every run on one state
dir with the stack left running between runs, as `make demo` typed twice (each run starts by moving
the earlier run's state aside).

    .venv/bin/python benchmarks/loop.py --runs 5 --busy-cores 1
    .venv/bin/python benchmarks/loop.py --runs 3 --busy-cores 1 --story bad-release
    .venv/bin/python benchmarks/loop.py --runs 3 --busy-cores 1 --same-home
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

SERVICES = ("mlflow", "serving", "monitor", "retrainer", "prometheus", "alertmanager")
SANDBOX = str(Path(sys.executable).parent / "sandbox")
RECOVERY_TARGET_S = 180.0
console = Console(stderr=True)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support: the one free_port

from tests.support.processes import free_port  # noqa: E402


def spin(seconds: float) -> None:
    """A CPU hog that stops by itself."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def stack_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "SANDBOX_HOME": str(home), "COLUMNS": "160"}
    env.update({f"SANDBOX_{name.upper()}_PORT": str(free_port()) for name in SERVICES})
    return env


def one_run(
    index: int, busy_cores: int, timeout: float, keep: Path | None, story: str, env: dict | None = None
) -> dict:
    """One demo; on ``env``'s stack (left running) when given, else on a fresh one it stops and removes."""
    own = env is None
    env = env or stack_env(Path(tempfile.mkdtemp(prefix=f"loop-{index}-")))
    home = Path(env["SANDBOX_HOME"])
    hogs = [multiprocessing.Process(target=spin, args=(timeout,), daemon=True) for _ in range(busy_cores)]
    for hog in hogs:
        hog.start()
    started = time.monotonic()
    try:
        done = subprocess.run(
            [SANDBOX, "demo", "--json", "--story", story],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        lines = done.stdout.strip().splitlines()
        summary = json.loads(lines[-1]) if lines else {"completed": False, "error": done.stderr[-500:]}
    except subprocess.TimeoutExpired:
        summary = {"completed": False, "failed_step": "benchmark", "error": f"no end within {timeout:.0f}s"}
    finally:
        for hog in hogs:
            hog.kill()
        if own:
            subprocess.run([SANDBOX, "down"], env=env, capture_output=True, timeout=120)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for report in (home / "reports").glob("demo-*.html"):
                shutil.copy(report, keep / f"run{index}-{report.name}")
            if (home / "logs").is_dir():
                shutil.copytree(home / "logs", keep / f"run{index}-logs", dirs_exist_ok=True)
        if own:
            shutil.rmtree(home, ignore_errors=True)
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh demo runs in a row")
    parser.add_argument("--busy-cores", type=int, default=0, help="cores kept busy by a CPU hog meanwhile")
    parser.add_argument("--timeout", type=float, default=1500, help="seconds one run may take")
    parser.add_argument("--keep", type=Path, help="copy each run's report and logs here")
    parser.add_argument("--story", default="covariate-shift", help="the demo's story (`sandbox demo --help`)")
    parser.add_argument("--same-home", action="store_true", help="all runs on one state dir, stack left up")
    args = parser.parse_args()
    if not 1 <= args.runs <= 20 or not 0 <= args.busy_cores <= os.cpu_count():
        parser.error(f"--runs must be 1..20 and --busy-cores 0..{os.cpu_count()}")
    results = []
    shared = stack_env(Path(tempfile.mkdtemp(prefix="loop-same-"))) if args.same_home else None
    with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("")
        for index in range(1, args.runs + 1):
            progress.update(task, description=f"run {index}/{args.runs} (busy cores {args.busy_cores})")
            result = one_run(index, args.busy_cores, args.timeout, args.keep, args.story, shared)
            results.append(result)
            progress.console.print(f"run {index}: {json.dumps(result)}")
    if shared:
        subprocess.run([SANDBOX, "down"], env=shared, capture_output=True, timeout=120)
        shutil.rmtree(shared["SANDBOX_HOME"], ignore_errors=True)
    table = Table(
        "run",
        "completed",
        "detect s",
        "retrain s",
        "shadow s",
        "recover s",
        "bake s",
        "rollback",
        "requests",
        "failed",
        "failed step",
    )
    for index, r in enumerate(results, start=1):
        table.add_row(
            str(index), str(r.get("completed")), str(r.get("time_to_detect_s")), str(r.get("time_to_retrain_s")),
            str(r.get("shadow_s")), str(r.get("time_to_recover_s")), str(r.get("bake_s")),
            (r.get("rollback") or "")[:60], str(r.get("requests")),
            str(r.get("failed_requests")),
            str(r.get("failed_step") or ""),
        )  # fmt: skip
    Console(width=200).print(table)  # wide enough for the rollback reason, also when piped
    completed = [r for r in results if r.get("completed")]
    recoveries = [r["time_to_recover_s"] for r in completed]
    clean = all(r.get("failed_requests") == 0 for r in results)
    in_time = all(t < RECOVERY_TARGET_S for t in recoveries) and len(completed) == len(results)
    print(
        f"completed {len(completed)}/{len(results)} with {args.busy_cores} busy core(s); "
        f"0 failed requests in every run: {clean}; worst recovery {max(recoveries, default=None)} s "
        f"(all under {RECOVERY_TARGET_S:.0f} s: {in_time})"
    )
    print(json.dumps({"runs": results, "busy_cores": args.busy_cores, "story": args.story,
                      "same_home": args.same_home}))  # fmt: skip


if __name__ == "__main__":
    main()
