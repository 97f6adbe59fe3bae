"""Benchmark the drift monitor: evaluation time (Evidently vs a NumPy/SciPy baseline) and ingest throughput.

1. Evaluation: a 5,000-row reference (what the registry logs) against clean windows of 1k, 10k and
   100k rows of the loan schema's 11 features, in the same run:
   - ``evidently``: ``services.monitor.drift.evaluate_drift``, the monitor's verdict: the data drift
     preset's per-column tests (Evidently's own selection and thresholds) over declared numeric and
     categorical columns, plus the missing-share check;
   - ``preset``: the same window through ``Report([DataDriftPreset])`` without HTML (what the verdict
     cost before: the preset builds its plots whether or not they are shown); ``report html``: the
     preset's HTML report, once (what opening ``/reports/latest`` costs);
   - ``baseline``: per-column two-sample tests on NumPy arrays, no per-row Python: K-S
     (``scipy.stats.ks_2samp``, asymptotic p-value) for numeric columns, chi-square on the contingency
     table of category counts (``scipy.stats.chi2_contingency``) for categorical ones; drifted when p < 0.05.
   - ``quality``: ``services.monitor.quality.evaluate_quality``, the data-quality checks on the same
     window (pandas counts, median/IQR, constant columns and duplicates), against the reference's
     profile (computed once a version, like the monitor); ``drift + quality`` is what the monitor's evaluation costs:
     the window prepared once for both, the reference prepared once a version;
   - ``counts ev / np``: the missing, out-of-range and unseen-category shares through Evidently's
     metrics (``quality.evidently_counts``) against the pandas counts the monitor uses
     (``quality.counts``, equal to them), CPU seconds;
   - ``all-evidently quality``: the same checks with Evidently's ``MedianValue``, ``QuantileValue``
     (IQR), ``ConstantColumnsCount`` and ``DuplicatedRowCount`` too, once: why those are pandas;
   Median wall time of ``--repeats`` runs after one warm-up (imports excluded), and the ratio.
   One BLAS thread, as the monitor runs (two spun for 5 % less wall time at twice the CPU).
   The two do not use the same tests (Evidently picks distances above 1,000 reference rows), so the
   flagged features on a covariate-shifted 10k window are printed too, as a sanity check, with whether
   the verdict's per-column results equal the preset's.
2. Ingest: a real monitor process (uvicorn, a temp SQLite store, evaluator idle) takes batches of
   ``--batch`` unique records from ``--threads`` client threads for ``--seconds``; records/s counts
   records acknowledged with 2xx (each answer comes after the commit), plus the batch latency.
   The clients pre-encode the records, but share the machine's cores with the server.

Targets: a 10k-row evaluation (Evidently, no HTML) < 1 s; drift + quality on 10k rows < 0.2 s;
ingest > 5,000 records/s.
It prints rich tables, whether the targets hold, and one JSON line with everything (stdout; progress
on stderr). Run from the repository root:

    .venv/bin/python benchmarks/drift.py [--sizes 1000,10000,100000] [--repeats 3]
        [--seconds 15] [--threads 4] [--batch 500] [--skip-eval] [--skip-ingest]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from pipelines.data import generate_loans
from pipelines.features import LOAN_SCHEMA, FeatureSchema
from pipelines.scenarios import apply_scenario
from pipelines.train import features_only
from services.monitor.drift import (
    column_tests,
    drift_report_html,
    evaluate_drift,
    prepare,
    preset_features,
    preset_mismatches,
    run_preset,
)
from services.monitor.quality import QualityThresholds, counts, evaluate_quality, evidently_counts, profile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.support: the one place of ports, waits and process groups

from tests.support.processes import free_port, start_process_group, stop_process_group, wait_http  # noqa: E402

TARGET_EVAL_SECONDS, TARGET_EVAL_ROWS = 1.0, 10_000
TARGET_DRIFT_AND_QUALITY_SECONDS = 0.2
TARGET_INGEST_PER_SECOND = 5_000
err = Console(stderr=True)
out = Console()


# --- the baseline ----------------------------------------------------------------------------------


def baseline_drift(
    current: pd.DataFrame, reference: pd.DataFrame, schema: FeatureSchema, alpha: float = 0.05
):
    """Per-column p-values and flags: K-S for numeric, chi-square on category counts for categorical."""
    from scipy.stats import chi2_contingency, ks_2samp

    cur, ref = prepare(current, schema), prepare(reference, schema)
    pvalues = {}
    cur_num, ref_num = cur[schema.numeric].to_numpy(float), ref[schema.numeric].to_numpy(float)
    for j, name in enumerate(schema.numeric):
        a, b = ref_num[:, j], cur_num[:, j]
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
        pvalues[name] = float(ks_2samp(a, b, method="asymp").pvalue) if len(a) and len(b) else 0.0
    for name in schema.categorical:
        a, b = ref[name].dropna().to_numpy(str), cur[name].dropna().to_numpy(str)
        categories, codes = np.unique(np.concatenate([a, b]), return_inverse=True)
        table = np.vstack(
            [
                np.bincount(codes[: len(a)], minlength=len(categories)),
                np.bincount(codes[len(a) :], minlength=len(categories)),
            ]
        )
        table = table[:, table.sum(axis=0) > 0]
        pvalues[name] = float(chi2_contingency(table)[1]) if table.shape[1] > 1 else 1.0
    flags = {name: p < alpha for name, p in pvalues.items()}
    return {"drift_share": sum(flags.values()) / len(flags), "pvalues": pvalues, "flags": flags}


def all_evidently_quality(current: pd.DataFrame, reference: pd.DataFrame, schema: FeatureSchema) -> None:
    """The checks' statistics all through Evidently metrics (what the monitor does not do: too slow)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently import metrics as m

    cur, ref = prepare(current, schema), prepare(reference, schema)
    metrics = [m.DuplicatedRowCount(), m.ConstantColumnsCount()]
    for name in schema.names:
        metrics.append(m.MissingValueCount(column=name))
        if name in schema.numeric:
            low, high = float(ref[name].min()), float(ref[name].max())
            metrics += [m.OutRangeValueCount(column=name, left=low, right=high), m.MedianValue(column=name)]
            metrics += [m.QuantileValue(column=name, quantile=p) for p in (0.25, 0.75)]
        else:
            metrics.append(m.OutListValueCount(column=name, values=sorted(ref[name].dropna().unique())))
    definition = DataDefinition(numerical_columns=schema.numeric, categorical_columns=schema.categorical)
    Report(metrics).run(current_data=Dataset.from_pandas(cur, data_definition=definition))


def cpu_timed(fn, repeats: int) -> float:
    """Median CPU seconds of this process: what a run costs when the shared machine's other load is
    taken out (the work is single-threaded pandas/NumPy/SciPy, so on an idle core it is the wall time)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: imports and caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_evaluation(sizes: list[int], repeats: int, reference_rows: int) -> dict:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")  # as the monitor runs (services/monitor/app.py)
    reference = generate_loans(reference_rows, seed=1)
    reference_profile, thresholds = profile(reference, LOAN_SCHEMA), QualityThresholds()
    prepared_reference = prepare(reference, LOAN_SCHEMA)
    rows = []
    for n in sizes:
        current = generate_loans(n, seed=2)
        err.print(f"[evaluation] {n:,} rows: evidently ...")
        evidently_s = timed(
            lambda c=current: evaluate_drift(c, reference, LOAN_SCHEMA, min_rows=1),
            repeats,
        )
        err.print(f"[evaluation] {n:,} rows: data quality ...")
        quality_s = timed(
            lambda c=current: evaluate_quality(c, reference_profile, LOAN_SCHEMA, thresholds, min_rows=1),
            repeats,
        )
        prepared = prepare(current, LOAN_SCHEMA)
        counts_evidently_s = cpu_timed(
            lambda p=prepared: evidently_counts(p, reference_profile, LOAN_SCHEMA), repeats
        )
        counts_numpy_s = cpu_timed(lambda p=prepared: counts(p, reference_profile, LOAN_SCHEMA), repeats)

        def evaluation(c=current):
            """What the monitor's evaluation does: the window prepared once for both, the reference
            prepared and profiled once a version (services/monitor/evaluator.py)."""
            window = prepare(c, LOAN_SCHEMA)
            evaluate_drift(window, prepared_reference, LOAN_SCHEMA, min_rows=1, prepared=True)
            evaluate_quality(window, reference_profile, LOAN_SCHEMA, thresholds, min_rows=1, prepared=True)

        drift_and_quality_s = timed(evaluation, repeats)
        drift_and_quality_cpu_s = cpu_timed(evaluation, repeats)
        start = time.perf_counter()
        all_evidently_quality(current, reference, LOAN_SCHEMA)
        all_evidently_s = time.perf_counter() - start
        err.print(f"[evaluation] {n:,} rows: preset report ...")
        preset_s = timed(lambda c=current: run_preset(c, reference, LOAN_SCHEMA), repeats)
        start = time.perf_counter()
        drift_report_html(current, reference, LOAN_SCHEMA)
        html_s = time.perf_counter() - start
        err.print(f"[evaluation] {n:,} rows: baseline ...")
        baseline_s = timed(lambda c=current: baseline_drift(c, reference, LOAN_SCHEMA), repeats)
        rows.append(
            {
                "rows": n,
                "features": len(LOAN_SCHEMA.names),
                "evidently_s": round(evidently_s, 4),
                "quality_s": round(quality_s, 4),
                "drift_and_quality_s": round(drift_and_quality_s, 4),
                "drift_and_quality_cpu_s": round(drift_and_quality_cpu_s, 4),
                "all_evidently_quality_s": round(all_evidently_s, 3),
                "counts_evidently_cpu_s": round(counts_evidently_s, 4),
                "counts_numpy_cpu_s": round(counts_numpy_s, 4),
                "preset_s": round(preset_s, 4),
                "report_html_s": round(html_s, 4),
                "baseline_s": round(baseline_s, 4),
                "ratio": round(evidently_s / baseline_s, 1),
            }
        )
    std = {c: float(reference[c].std()) for c in ("credit_score", "debt_to_income")}
    shifted = apply_scenario(generate_loans(10_000, seed=3), "covariate_shift", 1.0, reference_std=std)
    ev = evaluate_drift(shifted, reference, LOAN_SCHEMA, min_rows=1)
    base = baseline_drift(shifted, reference, LOAN_SCHEMA)
    sanity = {
        "evidently": sorted(ev.drifted_features),
        "baseline": sorted(n for n, f in base["flags"].items() if f),
        "evidently_methods": sorted({f.method for f in ev.features.values()}),
        "verdict_equals_preset": not preset_mismatches(
            column_tests(prepare(shifted, LOAN_SCHEMA), prepare(reference, LOAN_SCHEMA), LOAN_SCHEMA),
            preset_features(run_preset(shifted, reference, LOAN_SCHEMA)),
        ),
    }
    return {"reference_rows": reference_rows, "results": rows, "covariate_shift_10k_flagged": sanity}


# --- ingest ----------------------------------------------------------------------------------------

LAUNCH = (
    "import uvicorn\n"
    "from sandbox.settings import Settings\n"
    "from services.monitor.app import MonitorConfig, create_app\n"
    "app = create_app(Settings(), MonitorConfig(interval_seconds=3600))\n"
    "uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')\n"
)


def encoded_records(n: int) -> list[str]:
    """Each record as JSON without its request_id, so a batch is built by string joins, not json.dumps."""
    frame = features_only(generate_loans(n, seed=5), LOAN_SCHEMA)
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    now = time.time()
    return [
        json.dumps({"ts": now, "model_version": "1", "features": row, "prediction": 0, "probability": 0.2})[
            1:
        ]
        for row in rows
    ]


def bench_ingest(seconds: float, threads: int, batch: int, warmup: float) -> dict:
    home = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "SANDBOX_HOME": str(home),
        "SANDBOX_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",  # not needed: the evaluator is idle
        "SANDBOX_ALERTMANAGER_PORT": str(free_port()),
    }
    log = home / "monitor.log"
    proc = start_process_group([sys.executable, "-c", LAUNCH.format(port=port)], log, env, cwd=REPO)
    try:
        wait_http(f"{url}/healthz", 240, process=proc, log_path=log)
        err.print(f"[ingest] monitor up on {url}; {threads} threads x batches of {batch} for {seconds:.0f}s")
        template = encoded_records(batch)
        lock = threading.Lock()
        state = {"acked": 0, "errors": 0, "latencies": [], "measuring": False}
        stop = threading.Event()

        def client():
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    body = "[" + ",".join(f'{{"request_id":"{uuid.uuid4().hex}",{r}' for r in template) + "]"
                    payload = ('{"records":' + body + "}").encode()
                    start = time.perf_counter()
                    try:
                        response = http.post(
                            f"{url}/ingest", content=payload, headers={"content-type": "application/json"}
                        )
                        ok = response.status_code < 300
                    except httpx.HTTPError:
                        ok = False
                    elapsed = time.perf_counter() - start
                    with lock:
                        if state["measuring"]:
                            if ok:
                                state["acked"] += batch
                                state["latencies"].append(elapsed)
                            else:
                                state["errors"] += 1

        workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
        for w in workers:
            w.start()
        time.sleep(warmup)
        with lock:
            state["measuring"], started = True, time.perf_counter()
        time.sleep(seconds)
        with lock:
            state["measuring"], elapsed = False, time.perf_counter() - started
            acked, errors, latencies = state["acked"], state["errors"], sorted(state["latencies"])
        stop.set()
        for w in workers:
            w.join(30)
        stored = httpx.get(f"{url}/api/status", timeout=30).json()["store"]["records"]
        return {
            "threads": threads,
            "batch": batch,
            "seconds": round(elapsed, 2),
            "acknowledged": acked,
            "records_per_second": round(acked / elapsed),
            "errors": errors,
            "batch_p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
            "batch_p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
            "stored_total": stored,
        }
    finally:
        stop_process_group(proc)


# --- report ----------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from exc
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=parse_sizes, default=[1_000, 10_000, 100_000], help="window rows")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per size (median shown)")
    parser.add_argument("--reference-rows", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=15.0, help="ingest measurement duration")
    parser.add_argument("--warmup", type=float, default=3.0, help="ingest warm-up before measuring")
    parser.add_argument("--threads", type=int, default=4, help="ingest client threads")
    parser.add_argument("--batch", type=int, default=500, help="records per /ingest call (at most 5000)")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()

    # The load average goes with the figures: wall times on a shared machine grow with it.
    report: dict = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    verdicts = []
    if not args.skip_eval:
        evaluation = report["evaluation"] = bench_evaluation(args.sizes, args.repeats, args.reference_rows)
        table = Table(title=f"Drift evaluation, {evaluation['reference_rows']:,}-row reference, median s")
        columns = (
            "rows",
            "features",
            "evidently",
            "quality",
            "drift + quality",
            "(cpu)",
            "counts ev / np (cpu)",
            "all-evidently quality",
        )
        for column in (*columns, "preset", "report html", "numpy/scipy", "ratio"):
            table.add_column(column, justify="right")
        for r in evaluation["results"]:
            table.add_row(
                f"{r['rows']:,}",
                str(r["features"]),
                f"{r['evidently_s']:.3f}",
                f"{r['quality_s']:.3f}",
                f"{r['drift_and_quality_s']:.3f}",
                f"{r['drift_and_quality_cpu_s']:.3f}",
                f"{r['counts_evidently_cpu_s']:.3f} / {r['counts_numpy_cpu_s']:.4f}",
                f"{r['all_evidently_quality_s']:.2f}",
                f"{r['preset_s']:.3f}",
                f"{r['report_html_s']:.3f}",
                f"{r['baseline_s']:.4f}",
                f"{r['ratio']:.0f}x",
            )
        out.print(table)
        out.print(f"covariate shift, 10k rows, flagged: {evaluation['covariate_shift_10k_flagged']}")
        at_target = [r for r in evaluation["results"] if r["rows"] == TARGET_EVAL_ROWS]
        if at_target:
            holds = at_target[0]["evidently_s"] < TARGET_EVAL_SECONDS
            verdicts.append(
                (
                    f"{TARGET_EVAL_ROWS:,}-row evaluation < {TARGET_EVAL_SECONDS:.0f} s",
                    holds,
                    at_target[0]["evidently_s"],
                )
            )
            for kind in ("drift_and_quality_s", "drift_and_quality_cpu_s"):
                together = at_target[0][kind]
                verdicts.append(
                    (
                        f"{TARGET_EVAL_ROWS:,}-row drift + data quality < {TARGET_DRIFT_AND_QUALITY_SECONDS} s"
                        + (" (CPU time)" if "cpu" in kind else " (wall time)"),
                        together < TARGET_DRIFT_AND_QUALITY_SECONDS,
                        together,
                    )
                )
    if not args.skip_ingest:
        ingest = report["ingest"] = bench_ingest(args.seconds, args.threads, args.batch, args.warmup)
        table = Table(title="Ingest into a real monitor process (2xx-acknowledged records)")
        for column in ("threads", "batch", "records/s", "batch p50 ms", "batch p99 ms", "errors", "stored"):
            table.add_column(column, justify="right")
        table.add_row(
            str(ingest["threads"]),
            str(ingest["batch"]),
            f"{ingest['records_per_second']:,}",
            str(ingest["batch_p50_ms"]),
            str(ingest["batch_p99_ms"]),
            str(ingest["errors"]),
            f"{ingest['stored_total']:,}",
        )
        out.print(table)
        verdicts.append(
            (
                f"ingest > {TARGET_INGEST_PER_SECOND:,} records/s",
                ingest["records_per_second"] > TARGET_INGEST_PER_SECOND,
                ingest["records_per_second"],
            )
        )
    for name, holds, value in verdicts:
        out.print(f"target {name}: {'[green]holds[/]' if holds else '[red]does not hold[/]'} ({value})")
    report["targets"] = {name: {"holds": holds, "value": value} for name, holds, value in verdicts}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
