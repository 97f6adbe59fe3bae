"""Sound drift statistics at the sizes the loop uses: false alarms and detection of the monitor's verdict.

Every number comes from ``services.monitor.drift.evaluate_drift``, the verdict the monitor runs (Evidently's
per-column test selection, the thresholds asked for, the missing-share check). A verdict with any feature
flagged is an alarm, because ``DataDriftDetected`` fires on any flagged feature.

1. False alarms: window and reference drawn independently from one distribution, ``--resamples`` times
   per case (fresh seeds each time), at the reference/window sizes the loop uses:
   - v1: the reference logged with the model, up to 5,000 training rows (pipelines/registry.py), clean;
   - v2: the reference is the rows served after the alert (``retrain_drift_reference_rows``), so it is drawn from
     each incident's distribution, and the window from the same one;
   - windows of ``monitor_min_rows``: a version is judged from that many rows on, and the smallest
     window it is judged on is the noisiest; demo sizes (sandbox/demo.py ``DEMO_OVERRIDES``) and
     production defaults (``Settings``). ``concept_drift`` leaves the features as they are: its v2
     case is the clean one.
   Rates are printed for Evidently's default thresholds ("before") and the chosen ones ("after"), with the
   99th percentile of the largest normed Wasserstein distance and the largest Jensen-Shannon distance
   over the features: the threshold each would need for 1 % false alarms at that size.
2. Detection: each scripted incident (pipelines/scenarios.py, severity 1 as ``sandbox demo`` and
   ``sandbox incident`` use) against the clean 5,000-row v1 reference, in windows whose newest ``share``
   rows are the incident's (the rest clean, as in the monitor's sliding window after the switch), for
   the demo window size; the smallest share detected in every resample becomes a time to detect at the
   demo's rate, worst case: rows to wait / (rps x rows per request) + the feed's flush + one monitor
   interval + the alert's ``for:`` + Prometheus' scrape and rule-evaluation intervals.

Rows are generated as ``sandbox traffic`` makes them: ``generate_loans`` then ``apply_scenario`` with the
traffic's fixed shift unit (the standard deviations of 5,000 clean rows, seed 12345).

    PYTHONPATH=. .venv/bin/python benchmarks/drift_stats.py [--resamples 200] [--detect-resamples 20]
        [--seed 0] [--wasserstein 0.2] [--demo '{"monitor_min_rows": ...}'] [--json]

Progress goes to stderr, tables (and with ``--json`` one JSON line) to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.data import generate_loans
from pipelines.features import LOAN_SCHEMA
from pipelines.registry import REFERENCE_ROWS
from pipelines.scenarios import SCENARIOS, apply_scenario
from services.monitor.drift import DRIFT, evaluate_drift

# The demo sizes this benchmark recommends (docs/drift-statistics.md): v2's reference of 2,000 rows served
# after the alert (was 1,200), windows of 1,500. sandbox/demo.py's DEMO_OVERRIDES should carry them.
RECOMMENDED_DEMO = {
    "retrain_drift_reference_rows": 2_000,
    "monitor_min_rows": 1_500,
    "monitor_window_rows": 1_500,
}
SEVERITY = 1.0  # what `sandbox demo` and `sandbox incident` use by default
# launch_label_bug's features are new_category's (only its labels differ): measured there.
INCIDENTS = tuple(s for s in SCENARIOS if s not in ("none", "launch_label_bug"))
# The traffic's shift unit (sandbox/traffic.py run_traffic): the std of 5,000 clean rows, seed 12345.
TRAFFIC_STD = {c: float(generate_loans(5_000, seed=12_345)[c].std()) for c in LOAN_SCHEMA.numeric}
SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
# The demo's pace and alerting (sandbox/demo.py, monitoring/prometheus/prometheus.yml).
DEMO_ROWS_PER_SECOND = 30 * 2
TRAFFIC_BATCH_ROWS = DEMO_ROWS_PER_SECOND  # run_traffic generates about a second of rows at a time
MONITOR_INTERVAL_S, ALERT_FOR_S, SCRAPE_S, RULE_EVAL_S = 5.0, 10.0, 5.0, 5.0
FEED_S = 1.0  # serving's feed flushes every 0.5 s (Settings.feed_flush_seconds), then the POST


def draw(rows: int, scenario: str, seed: int) -> pd.DataFrame:
    """``rows`` loan applications under ``scenario`` at the demo's severity, as the traffic makes them.

    ``label_shift`` subsamples within each batch the traffic generates (a second of rows; about a third
    of them remain), so it is drawn batch by batch like that until ``rows`` are there; the other
    scenarios act row by row.
    """
    if scenario != "label_shift":
        return apply_scenario(generate_loans(rows, seed), scenario, SEVERITY, seed, reference_std=TRAFFIC_STD)
    batches, drawn, k = [], 0, 0
    while drawn < rows:
        batches.append(
            apply_scenario(generate_loans(TRAFFIC_BATCH_ROWS, seed + k), scenario, SEVERITY, seed + k)
        )
        drawn, k = drawn + len(batches[-1]), k + 7919
    return pd.concat(batches, ignore_index=True).head(rows)


def incident_window(rows: int, share: float, scenario: str, seed: int) -> pd.DataFrame:
    """A sliding window ``share`` of the way into an incident: clean rows, then the incident's newest."""
    incident = round(rows * share)
    parts = [generate_loans(rows - incident, seed)] if incident < rows else []
    parts += [draw(incident, scenario, seed + 1)] if incident else []
    return pd.concat(parts, ignore_index=True)


def case_seed(seed: int, *parts) -> int:
    """A seed per case, stable across runs and distinct between cases (no draws shared between cases)."""
    return (seed * 1_000_003 + zlib.crc32(repr(parts).encode())) % 2**31  # + draw offsets < 2**32


def largest_scores(result) -> tuple[float, float]:
    """The largest normed Wasserstein distance and the largest Jensen-Shannon distance of a verdict."""
    wd = [f.score for f in result.features.values() if f.method.startswith("Wasserstein")]
    js = [f.score for f in result.features.values() if f.method.startswith("Jensen-Shannon")]
    return max(wd, default=math.nan), max(js, default=math.nan)


def false_alarms(
    reference_rows: int,
    window_rows: int,
    scenario: str,
    resamples: int,
    seed: int,
    configs: dict[str, dict | None],
    on_step=lambda: None,
) -> dict:
    """Alarms of the verdict under each threshold config, on the same independent draws of one distribution.

    Returns per config: ``rate``, ``alarms``, ``flagged`` (feature: count); and the 99th percentiles of
    the largest normed Wasserstein and Jensen-Shannon distance per verdict (thresholds do not change them).
    """
    out = {name: {"alarms": 0, "flagged": {}} for name in configs}
    scores = []
    base = case_seed(seed, "false", reference_rows, window_rows, scenario)
    for i in range(resamples):
        reference = draw(reference_rows, scenario, base + 2 * i)
        window = draw(window_rows, scenario, base + 2 * i + 1)
        for name, thresholds in configs.items():
            result = evaluate_drift(window, reference, LOAN_SCHEMA, min_rows=1, thresholds=thresholds)
            out[name]["alarms"] += result.verdict == DRIFT
            for feature in result.drifted_features:
                out[name]["flagged"][feature] = out[name]["flagged"].get(feature, 0) + 1
        scores.append(largest_scores(result))
        on_step()
    for found in out.values():
        found["rate"] = found["alarms"] / resamples
        found["flagged"] = dict(sorted(found["flagged"].items(), key=lambda kv: -kv[1]))
    wd, js = np.array(scores).T
    return {
        "reference_rows": reference_rows,
        "window_rows": window_rows,
        "distribution": scenario,
        "resamples": resamples,
        "wasserstein_p99": float(np.nanquantile(wd, 0.99)),
        "jensen_shannon_p99": float(np.nanquantile(js, 0.99)),
        **out,
    }


def detection(
    scenario: str,
    share: float,
    window_rows: int,
    resamples: int,
    seed: int,
    configs: dict[str, dict | None],
    reference_rows: int = REFERENCE_ROWS,
    on_step=lambda: None,
) -> dict[str, float]:
    """Per config, the share of verdicts that flag a window ``share`` of the way into ``scenario``.

    The reference is clean, as v1's (a sample of its training rows).
    """
    hits = dict.fromkeys(configs, 0)
    base = case_seed(seed, "detect", reference_rows, window_rows, scenario, share)
    for i in range(resamples):
        reference = generate_loans(reference_rows, base + 3 * i)
        window = incident_window(window_rows, share, scenario, base + 3 * i + 1)
        for name, thresholds in configs.items():
            result = evaluate_drift(window, reference, LOAN_SCHEMA, min_rows=1, thresholds=thresholds)
            hits[name] += result.verdict == DRIFT
        on_step()
    return {name: n / resamples for name, n in hits.items()}


def seconds_to_detect(share: float, window_rows: int, rows_per_second: float = DEMO_ROWS_PER_SECOND) -> float:
    """Worst case from the switch to a firing alert, once ``share`` of the window is the incident's."""
    rows_wait = share * window_rows / rows_per_second
    return rows_wait + FEED_S + MONITOR_INTERVAL_S + ALERT_FOR_S + SCRAPE_S + RULE_EVAL_S


@dataclass(frozen=True)
class Case:
    label: str
    reference_rows: int
    window_rows: int
    distributions: tuple[str, ...]


def cases(demo: dict, settings) -> list[Case]:
    """The sizes the loop judges, demo and production: a version's window grows from ``monitor_min_rows``
    to ``monitor_window_rows``, and the smallest window is the noisiest, so it is the one measured."""
    v2 = (
        "none",
        *(s for s in INCIDENTS if s != "concept_drift"),
    )  # concept drift leaves features as they are
    found: dict[tuple, list[str]] = {}  # one case per size, however many setups share it
    for label, sizes in (("demo", demo), ("prod", settings.model_dump())):
        window = sizes["monitor_min_rows"]
        found.setdefault((REFERENCE_ROWS, window, ("none",)), []).append(f"{label} v1")
        found.setdefault((sizes["retrain_drift_reference_rows"], window, v2), []).append(f"{label} v2")
    out = [Case(" = ".join(labels), *key) for key, labels in found.items()]
    # A reference with at most 1,000 values in a column gets Evidently's p-value tests there: v2's
    # 1,200-row reference after missing_values (62ad572's demo) had 840 in three columns (K-S).
    out.append(Case("K-S path", 1_200, demo["monitor_min_rows"], ("missing_values",)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resamples", type=int, default=200, help="false-alarm draws per size (>= 200)")
    parser.add_argument("--detect-resamples", type=int, default=20, help="detection draws per share")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--wasserstein",
        type=float,
        default=None,
        help="chosen normed-Wasserstein threshold (default: Settings)",
    )
    parser.add_argument("--demo", type=str, default=None, help="JSON of demo sizes (default: DEMO_OVERRIDES)")
    parser.add_argument("--configs", default="before,after", help="which of before,after to measure")
    parser.add_argument("--skip-detection", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every number")
    args = parser.parse_args()

    from sandbox.settings import Settings

    settings = Settings()
    if args.demo:
        demo = json.loads(args.demo)
    else:
        from sandbox.demo import DEMO_OVERRIDES

        demo = DEMO_OVERRIDES
    chosen = dict(settings.monitor_drift_thresholds)
    if args.wasserstein is not None:
        chosen["wasserstein"] = args.wasserstein
    configs = {k: v for k, v in {"before": None, "after": chosen}.items() if k in args.configs.split(",")}
    err, out = Console(stderr=True), Console(width=170)
    all_cases = cases(demo, settings)
    demo_window = demo["monitor_window_rows"]
    fa_steps = sum(len(c.distributions) for c in all_cases) * args.resamples
    detect_steps = 0 if args.skip_detection else len(INCIDENTS) * len(SHARES) * args.detect_resamples
    started = time.monotonic()
    report = {"thresholds": {k: v or "evidently defaults" for k, v in configs.items()}, "false_alarms": []}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    ) as progress:
        task = progress.add_task("false alarms", total=fa_steps)
        for case in all_cases:
            for dist in case.distributions:
                progress.update(task, description=f"false alarms: {case.label}, {dist}")
                found = false_alarms(
                    case.reference_rows, case.window_rows, dist, args.resamples, args.seed, configs,
                    on_step=lambda: progress.advance(task),
                )  # fmt: skip
                report["false_alarms"].append({"case": case.label, **found})
        task = progress.add_task("detection", total=detect_steps)
        report["detection"] = []
        for scenario in () if args.skip_detection else INCIDENTS:
            progress.update(task, description=f"detection: {scenario}")
            rates = {
                share: detection(
                    scenario,
                    share,
                    demo_window,
                    args.detect_resamples,
                    args.seed,
                    configs,
                    on_step=lambda: progress.advance(task),
                )  # fmt: skip
                for share in SHARES
            }
            row = {"scenario": scenario, "window_rows": demo_window}
            row |= {name: {str(share): rates[share][name] for share in SHARES} for name in configs}
            report["detection"].append(row)
    report["seconds"] = round(time.monotonic() - started, 1)

    table = Table(title=f"False alarms per verdict (same distribution, {args.resamples} resamples each)")
    columns = ["case", "reference", "window", "distribution", *configs, "WD p99", "JS p99"]
    for col in [*columns, *(f"flagged {name}" for name in configs)]:
        table.add_column(col, justify="left" if col in ("case", "distribution") or " " in col else "right")
    for r in report["false_alarms"]:
        table.add_row(
            r["case"], f"{r['reference_rows']:,}", f"{r['window_rows']:,}", r["distribution"],
            *(f"{r[name]['rate']:.1%}" for name in configs),
            f"{r['wasserstein_p99']:.3f}", f"{r['jensen_shannon_p99']:.3f}",
            *(", ".join(f"{k} {v}" for k, v in list(r[name]["flagged"].items())[:3]) for name in configs),
        )  # fmt: skip
    out.print(table)
    if args.skip_detection:
        configs = {}
    table = Table(title=f"Detection rate by incident share of a {demo_window:,}-row window (v1 reference)")
    table.add_column("scenario")
    table.add_column("thresholds")
    for share in SHARES:
        table.add_column(f"{share:.0%}", justify="right")
    table.add_column("s to alert", justify="right")
    for r in report["detection"]:
        for name in configs:
            rates = r[name]
            full = [float(s) for s, rate in rates.items() if rate == 1.0]
            needed = (
                min(full) if full and all(rates[str(s)] == 1.0 for s in SHARES if s >= min(full)) else None
            )
            r[f"{name}_share_needed"] = needed
            r[f"{name}_seconds"] = (
                None if needed is None else round(seconds_to_detect(needed, demo_window), 1)
            )
            table.add_row(
                r["scenario"], name, *(f"{rates[str(s)]:.0%}" for s in SHARES),
                "never" if needed is None else f"{r[f'{name}_seconds']:.0f}",
            )  # fmt: skip
    out.print(table)
    out.print(
        f"chosen thresholds: {chosen}; time to alert = share x {demo_window:,} rows / {DEMO_ROWS_PER_SECOND} rows/s"
        f" + {FEED_S:g} s feed + {MONITOR_INTERVAL_S:g} s monitor + {ALERT_FOR_S:g} s for:"
        f" + {SCRAPE_S + RULE_EVAL_S:g} s scrape/rules;"
        f" {report['seconds']:.0f} s"
    )
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
