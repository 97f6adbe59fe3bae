"""``sandbox``: the control plane's command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.params import TrainParams
from sandbox import status as status_of
from sandbox.settings import Settings

# The choices each --help lists, written out so that `--help` imports no pandas (pipelines/scenarios.py
# does); tests/unit/test_docs.py fails when they differ from the code's.
DRIFT_HELP = "covariate_shift | new_category | missing_values | concept_drift | label_shift"
SCENARIOS_HELP = f"none | {DRIFT_HELP} | unit_change | label_bug | launch_label_bug"
SOURCES_HELP = "synthetic | breast_cancer | csv | production"
SEVERITY_HELP = (
    "Scenario strength, 0..3: standard deviations for covariate_shift; for the others a share of rows, "
    "severity x 30 % (concept_drift 50 %, unit_change and label_bug 100 %), at most all; label_shift stops growing at 1. "
    "launch_label_bug: new_category's overseas rows with their labels inverted (a training set for the bad-release story)."
)

app = typer.Typer(
    help="mlops-sandbox: train, register, serve and monitor models on one machine (or a kind cluster).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def step_progress(progress: Progress, indent: str = ""):
    """A pipeline run's ``on_step``: one progress line per step, marked done or failed with its seconds."""
    tasks: dict[str, int] = {}

    def on_step(step: str, state: str, seconds: float) -> None:
        if step not in tasks:
            tasks[step] = progress.add_task(f"{indent}{step}", total=1)
        if state != "running":
            mark = "[green]done[/]" if state == "success" else f"[red]{state}[/]"
            progress.update(tasks[step], completed=1, description=f"{indent}{step} {mark} ({seconds:.1f}s)")

    return on_step


# --- the kind cluster (`--kind`): sandbox/kind_stack.py does the work, pipelines/remote.py runs KFP ---


def kind_up(timeout: float) -> None:
    """`sandbox up --kind`: preflight, the phases with their times, the first run, every URL."""
    from sandbox import kind_stack as ks

    report = ks.preflight(ks.run_command)  # before the heavy imports: a missing tool is said in seconds
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    if not report.ok:
        fail(report.message())

    from pipelines.data import DataError
    from pipelines.remote import DEFAULT_KFP_HOST, RemoteError
    from sandbox.training import train, train_params

    settings = Settings()
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err)
    phase_tasks: dict[str, int] = {}

    def on_phase(name: str, state: str, seconds: float, detail: str) -> None:
        if state == "running":
            phase_tasks[name] = progress.add_task(f"[bold]{name}[/]", total=1)
        else:
            progress.update(
                phase_tasks[name],
                completed=1,
                description=f"[bold]{name}[/] [green]done[/] ({seconds:.0f}s) {detail}",
            )

    def first_train() -> str:
        champion = (status_of.champion(settings) or {}).get("version")
        if champion is not None:
            return f"champion v{champion} already registered; skipped (`sandbox train --kind` trains again)"
        result = train(
            train_params(settings), settings, step_progress(progress, indent="  "), on_cluster=True,
            on_submitted=lambda run_id, url: progress.console.print(f"KFP run: {url}"),
        )  # fmt: skip
        verdict = "promoted to champion" if result.promoted else f"{result.outcome}: {result.reason}"
        return f"{result.model_name} v{result.model_version} {verdict} (roc_auc {result.metrics.get('roc_auc', 0):.3f})"

    try:
        with progress:
            results = ks.up(
                ks.run_command,
                first_train,
                settings.home / "kind",
                on_phase,
                report=report,
                logs_dir=settings.logs_dir,
                rollout_timeout=max(timeout, 600),
                kfp_host=settings.kfp_host or DEFAULT_KFP_HOST,
            )
    except (ks.KindStackError, RemoteError, DataError) as exc:
        fail(str(exc))
    table = Table("phase", "seconds", "result")
    for result in results:
        table.add_row(result.name, f"{result.seconds:.0f}", result.detail)
    table.add_row("[bold]total[/]", f"{sum(r.seconds for r in results):.0f}", "")
    console.print(table)
    urls = Table("UI / API", "URL")
    for name, url in {**ks.URLS, "MLflow": settings.mlflow_uri}.items():  # SANDBOX_MLFLOW_PORT moves it
        urls.add_row(name, url)
    console.print(urls)
    console.print(f"Grafana: user admin, password: [bold]{ks.grafana_password_command()}[/]", soft_wrap=True)
    console.print(
        "status: [bold]sandbox status --kind[/]; delete the cluster and stop everything: [bold]make down[/]"
    )
    console.print(f"each phase's log: {settings.logs_dir}/kind-*.log")


def kind_status(as_json: bool) -> None:
    """`sandbox status --kind`: deployments, restarting pods, PVCs, KFP and its runs, the champion."""
    from pipelines.remote import DEFAULT_KFP_HOST, RemoteError, connect, recent_runs
    from sandbox import kind_stack as ks

    settings = Settings()
    try:
        summary = ks.cluster_status(settings.kube_context, settings.kube_namespace)
    except ks.KindStackError as exc:
        fail(str(exc))
    runs, runs_error = None, None
    host = settings.kfp_host or DEFAULT_KFP_HOST
    ready, detail = ks.kfp_api_health(host)  # through the UI: a 200 alone does not mean the API is up
    try:
        if not ready:
            raise RemoteError(detail)
        runs = recent_runs(connect(host))
    except RemoteError as exc:
        runs_error = str(exc)
    except Exception as exc:  # the API answered health but not the listing
        runs_error = f"{type(exc).__name__}: {exc}"[:300]
    champion = status_of.champion(settings) if status_of.mlflow_answers(settings) else None
    if as_json:
        print(
            json.dumps(
                {
                    "cluster": summary,
                    "kfp_runs": runs,
                    "kfp_error": runs_error,
                    "champion": champion,
                    "urls": ks.URLS,
                }
            )
        )
    else:
        table = Table("deployment", "ready", "state")
        for d in summary["deployments"]:
            state = "[green]ok[/]" if d["healthy"] else "[red]not ready[/]"
            table.add_row(d["name"], f"{d['ready']}/{d['desired']}", state)
        console.print(table)
        for pod in summary["restarting"]:
            console.print(f"[yellow]pod {pod['name']}[/]: {pod['restarts']} restart(s) {pod['waiting']}")
        console.print(
            "PVCs: "
            + (
                ", ".join(f"{c['name']} {c['phase']} {c['capacity'] or ''}".strip() for c in summary["pvcs"])
                or "none"
            )
        )
        kfp = summary["kfp"]
        console.print(f"Kubeflow Pipelines: {kfp['ready']}/{kfp['total']} deployments ready")
        if runs:
            runs_table = Table("KFP run", "state", "created", "seconds")
            for run in runs:
                runs_table.add_row(
                    run["name"], run["state"], run["created_at"] or "", str(run["seconds"] or "")
                )
            console.print(runs_table)
        elif runs_error:
            console.print(f"[yellow]KFP runs unavailable:[/] {runs_error}")
        else:
            console.print("no KFP run yet: [bold]sandbox train --kind[/]")
        if champion:
            console.print(
                f"champion: [bold]{champion['name']}[/] v{champion['version']} "
                f"(roc_auc {champion['metrics'].get('roc_auc', 'n/a')})"
            )
        else:
            console.print(f"no champion (or MLflow does not answer at {settings.mlflow_uri})")
        for problem in summary["problems"]:
            console.print(f"[red]problem:[/] {problem}")
    if not summary["healthy"]:
        raise typer.Exit(1)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def up(
    local: Annotated[
        bool, typer.Option("--local/--kind", help="Embedded stack (default) or kind cluster.")
    ] = True,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for every service to be healthy; with --kind, for each rollout (at least 600)."
        ),
    ] = 120,
) -> None:
    """Start the platform and wait until every service is healthy (safe to run twice)."""
    from sandbox import local_stack

    if not local:
        kind_up(timeout)
        return
    settings = Settings()
    with console.status("starting the embedded stack...") as spinner:
        try:
            rows = local_stack.up(
                settings,
                timeout,
                on_ready=lambda name: spinner.update(f"{name} is healthy; waiting for the rest..."),
            )
        except local_stack.StackError as exc:
            fail(f"{exc}")
    print_status(rows)
    if missing := local_stack.missing_monitoring():
        err.print(f"[yellow]warning:[/] {local_stack.missing_monitoring_message(missing)}")
    console.print(f"state in {settings.home}; stop with [bold]sandbox down[/]")


@app.command()
def down() -> None:
    """Stop every process of the embedded stack (state on disk is kept; `make clean` removes it)."""
    from sandbox import local_stack

    strays = local_stack.down(Settings())
    console.print("stack stopped" + (f" ({strays} stray process(es) killed)" if strays else ""))


def print_status(rows: list[dict]) -> None:
    table = Table("service", "state", "pid", "health", "url")
    for row in rows:
        health = "[green]ok[/]" if row["healthy"] else f"[red]{row['detail']}[/]"
        table.add_row(row["name"], row["state"], str(row["pid"] or "-"), health, row["url"])
    console.print(table)


PAGES_SHOWN = 5  # the latest human notifications and held retrainings `sandbox status` shows


def print_pages(paged: list[dict], held: list[dict]) -> None:
    """The human receiver's latest notifications and the retrainings held for bad data, newest first."""
    from datetime import datetime

    def when(ts: float) -> str:
        return datetime.fromtimestamp(ts).strftime("%H:%M:%S")

    for note in paged:
        for alert in note["alerts"]:
            colour = "red" if alert["status"] == "firing" else "green"
            console.print(
                f"[bold {colour}]paged[/] {when(note['received_at'])} {alert['alertname']} {alert['status']}: "
                f"{alert['summary']} (runbook {alert['runbook'] or 'n/a'})"
            )
    for record in held:
        console.print(
            f"[yellow]retraining held[/] {when(record['at'])} {record['alertname']}: {record['reason']}"
        )


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of a table.")] = False,
    local: Annotated[
        bool, typer.Option("--local/--kind", help="Embedded stack (default) or kind cluster.")
    ] = True,
) -> None:
    """Show each service of the stack, its process and its health endpoint; exit 1 if any is unhealthy."""
    from sandbox import local_stack

    if not local:
        kind_status(as_json)
        return
    settings = Settings()
    rows = local_stack.status(settings)
    healthy = {r["name"] for r in rows if r["healthy"]}
    champion = status_of.champion(settings) if "mlflow" in healthy else None
    served = status_of.served_model(settings) if "serving" in healthy else None
    alerts = status_of.firing_alerts(settings) if "alertmanager" in healthy else None
    retrainer = (status_of.retrainer_status(settings) or {}) if "retrainer" in healthy else {}
    paged, held = retrainer.get("notifications", [])[:PAGES_SHOWN], retrainer.get("held", [])[:PAGES_SHOWN]
    release = retrainer.get("release")
    if as_json:
        print(
            json.dumps(
                {
                    "services": rows,
                    "champion": champion,
                    "served": served,
                    "alerts": alerts,
                    "paged": paged,
                    "held": held,
                    "release": release,
                    "home": str(settings.home),
                    "missing_binaries": local_stack.missing_monitoring(),
                }
            )
        )
    else:
        print_status(rows)
        if champion:
            console.print(
                f"champion: [bold]{champion['name']}[/] v{champion['version']} "
                f"(roc_auc {champion['metrics'].get('roc_auc', 'n/a')})"
            )
        elif any(r["healthy"] for r in rows):
            console.print("no champion yet: run [bold]sandbox train[/]")
        if served:
            console.print(f"serving: {served['name']} v{served['version']} at {settings.serving_url}/predict")
        if alerts:
            console.print(
                "[bold red]firing:[/] " + ", ".join(f"{a['name']} ({a['summary']})" for a in alerts)
            )
        elif alerts is not None:
            console.print("no alert firing")
        if release:
            console.print(status_of.release_line(release))
        print_pages(paged, held)
        if missing := local_stack.missing_monitoring():
            err.print(f"[yellow]warning:[/] {local_stack.missing_monitoring_message(missing)}")
        if not any(r["state"] == "RUNNING" for r in rows):
            err.print(
                "nothing is running: start the embedded stack with [bold]sandbox up --local[/] (or `make local`)"
            )
    if not all(r["healthy"] for r in rows):
        raise typer.Exit(1)


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of a table.")] = False,
) -> None:
    """Check what `make up` needs (tools, Docker, kind, host limits, ports, the KFP tag); exit 1 on a failure."""
    from sandbox import kind_stack as ks

    report = ks.preflight(ks.run_command)
    if as_json:
        print(json.dumps(report.as_dict()))
    else:
        colour = {ks.OK: "green", ks.WARNING: "yellow", ks.FAIL: "red", ks.SKIP: "dim"}
        table = Table("check", "state", "found", "fix")
        for c in report.checks:
            table.add_row(
                c.name, f"[{colour[c.state]}]{c.state}[/]", c.detail, c.fix if c.state != ks.OK else ""
            )
        console.print(table)
        console.print("ready for [bold]make up[/]" if report.ok else f"not ready. {ks.NO_DOCKER}")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def predict(
    file: Annotated[
        Path,
        typer.Option(
            "--file",
            "-f",
            help='JSON file: {"rows": [...]} or a list of rows (make one from GET /model\'s input_example: '
            "docs/loop-by-hand.md).",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")] = False,
) -> None:
    """Send rows to the serving endpoint and print the predictions."""
    import httpx

    settings = Settings()
    try:
        payload = json.loads(file.read_text())
    except FileNotFoundError:
        fail(f"{file} not found; pass a JSON file with --file (an example: GET {settings.serving_url}/model)")
    except json.JSONDecodeError as exc:
        fail(f"{file} is not valid JSON: {exc}")
    if isinstance(payload, list):
        payload = {"rows": payload}
    try:
        response = httpx.post(f"{settings.serving_url}/predict", json=payload, timeout=30)
    except httpx.HTTPError as exc:
        fail(
            f"serving is not reachable at {settings.serving_url} ({type(exc).__name__}); run `sandbox up --local`"
        )
    if response.status_code >= 400:
        body = response.json() if "json" in response.headers.get("content-type", "") else response.text
        detail = body.get("detail") if isinstance(body, dict) else None
        message = body.get("error", body) if isinstance(body, dict) else body
        problems = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in detail or [])
        fail(f"HTTP {response.status_code}: {message}" + (f" ({problems})" if problems else ""))
    answer = response.json()
    if as_json:
        print(json.dumps(answer))
        return
    table = Table("#", "prediction", "P(default)", "model", "request id")
    for i, row in enumerate(answer):
        table.add_row(
            str(i),
            str(row["prediction"]),
            f"{row['probability']:.4f}",
            f"{row['model']} v{row['model_version']}",
            row["request_id"],
        )
    console.print(table)


def send_traffic(
    rps, duration, scenario, severity, label_delay, rows_per_request, seed, as_json, incident=False
):
    from pipelines.data import DataError
    from sandbox.traffic import as_dict, record_incident, run_traffic

    settings = Settings()
    progress = Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=err)
    task = progress.add_task("starting...")

    def show(summary) -> None:
        failed = sum(summary.failed.values())
        progress.update(
            task,
            description=f"{summary.scenario}: {summary.requests} requests, {summary.ok} ok, {failed} failed, "
            f"{summary.labels_sent} labels, {summary.achieved_rps:.1f} req/s, versions {summary.versions}",
        )

    try:
        with progress:
            summary = run_traffic(
                settings, rps, duration, scenario, severity, label_delay, rows_per_request, seed, show
            )
    except DataError as exc:
        fail(str(exc))
    except Exception as exc:  # the sender itself died: say so plainly, not as a traceback
        fail(f"the traffic stopped: {type(exc).__name__}: {exc} (run again with -v for the service logs)")
    if incident:
        record_incident(settings, summary)
    if as_json:
        print(json.dumps(as_dict(summary)))
        return
    show(summary)
    console.print(
        f"{summary.requests} requests ({summary.rows} rows) in {summary.seconds:.1f}s = {summary.achieved_rps:.1f}/s; "
        f"ok {summary.ok}, failed {summary.failed or 0}; labels sent {summary.labels_sent}; versions {summary.versions}"
    )
    if summary.ok == 0:
        fail(
            f"no request succeeded; is serving up and serving a model? (`sandbox status`, {settings.serving_url})"
        )


@app.command()
def traffic(
    rps: Annotated[float, typer.Option(help="Requests per second (at most 500).")] = 10,
    duration: Annotated[float, typer.Option(help="Seconds to run (at most 3600).")] = 60,
    scenario: Annotated[
        str, typer.Option(help=f"Scenario of the generated rows: {SCENARIOS_HELP} | invalid_rows.")
    ] = "none",
    severity: Annotated[float, typer.Option(help=SEVERITY_HELP)] = 1.0,
    label_delay: Annotated[
        float | None,
        typer.Option(
            help="Send each row's true label to the monitor this many seconds later. Unset: no labels at all "
            "(live accuracy, ModelQualityDegraded and a retraining on production data need them)."
        ),
    ] = None,
    rows_per_request: Annotated[int, typer.Option(help="Rows in each /predict request.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed of the generated rows.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary at the end.")] = False,
) -> None:
    """Send generated loan applications to serving (and delayed labels to the monitor), loopback only."""
    send_traffic(rps, duration, scenario, severity, label_delay, rows_per_request, seed, as_json)


@app.command()
def incident(
    scenario: Annotated[
        str,
        typer.Argument(
            help=f"Drift (the world changed): {DRIFT_HELP}. Broken upstream (a human is paged, no retraining): "
            "unit_change | invalid_rows. label_bug: the labels sent for region north inverted, the features "
            "untouched (no drift; the live accuracy falls, and DataQualityDegraded pages a human once the champion "
            "ranks region north backwards); launch_label_bug: new_category's "
            "overseas rows with their labels inverted. Which alert each fires: "
            "docs/loop-by-hand.md."
        ),
    ],
    severity: Annotated[float, typer.Option(help=SEVERITY_HELP)] = 1.0,
    rps: Annotated[float, typer.Option(help="Requests per second.")] = 20,
    duration: Annotated[float, typer.Option(help="Seconds the incident lasts.")] = 120,
    label_delay: Annotated[
        float | None, typer.Option(help="Seconds until each row's true label arrives.")
    ] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary at the end.")] = False,
) -> None:
    """Start a named incident: drifted traffic for a while; once it ends, its start is appended to
    $SANDBOX_HOME/incidents.jsonl."""
    if scenario == "none":
        fail("an incident needs a drift scenario; for clean traffic use `sandbox traffic`")
    send_traffic(rps, duration, scenario, severity, label_delay, 1, 7, as_json, incident=True)


DEFAULTS = TrainParams(mlflow_uri="")  # the CLI's defaults are the pipeline's


@app.command()
def train(
    source: Annotated[
        str,
        typer.Option(
            help=f"{SOURCES_HELP} (production: the monitor's labelled records plus clean rows, "
            "as the retrainer trains; docs/retraining.md)."
        ),
    ] = DEFAULTS.source,
    scenario: Annotated[
        str, typer.Option(help=f"Drift scenario applied to the training data: {SCENARIOS_HELP}.")
    ] = DEFAULTS.scenario,
    severity: Annotated[float, typer.Option(help=SEVERITY_HELP)] = DEFAULTS.severity,
    n_rows: Annotated[
        int, typer.Option(help="Rows to load (real sources are subsampled).")
    ] = DEFAULTS.n_rows,
    seed: Annotated[int, typer.Option(help="Random seed for data and split.")] = DEFAULTS.seed,
    csv_path: Annotated[Path | None, typer.Option(help="CSV in the loan schema, with --source csv.")] = None,
    learning_rate: Annotated[
        float, typer.Option(help="Gradient boosting learning rate.")
    ] = DEFAULTS.learning_rate,
    max_iter: Annotated[int, typer.Option(help="Boosting iterations.")] = DEFAULTS.max_iter,
    max_depth: Annotated[int, typer.Option(help="Maximum tree depth.")] = DEFAULTS.max_depth,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object at the end.")] = False,
    local: Annotated[
        bool, typer.Option("--local/--kind", help="Embedded run (default) or the KFP API.")
    ] = True,
) -> None:
    """Run the train-and-register pipeline against the running MLflow and print the gate's decision."""
    from pipelines.data import DataError
    from pipelines.remote import RemoteError
    from pipelines.run import PipelineError
    from sandbox.training import train as run_training
    from sandbox.training import train_params

    settings = Settings()
    params = train_params(
        settings, source=source, scenario=scenario, severity=severity, n_rows=n_rows, seed=seed,
        csv_path=str(csv_path or ""), learning_rate=learning_rate, max_iter=max_iter, max_depth=max_depth,
    )  # fmt: skip
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err)
    try:
        with progress:
            result = run_training(
                params, settings, step_progress(progress), on_cluster=not local,
                on_submitted=lambda run_id, url: progress.console.print(f"KFP run: {url}"),
            )  # fmt: skip
    except (DataError, PipelineError, RemoteError) as exc:
        fail(str(exc))
    summary = {
        key: value
        for key, value in result.to_dict().items()
        if key not in ("log", "previous_champion_version", "submission_id")
        and (value is not None or not key.startswith("kfp_"))
    }
    if as_json:
        print(json.dumps(summary))
        return
    verdict = {
        "promoted": "[green]promoted to champion[/]",
        "shadow": "[cyan]challenger, in shadow[/] (the live gate decides: `sandbox release status`)",
    }.get(result.outcome, "[yellow]rejected by the offline gate[/]")
    console.print(f"run {result.run_id}  model {result.model_name} v{result.model_version}: {verdict}")
    console.print(f"offline gate: {result.reason}")
    console.print(
        "metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if k != "holdout_rows")
    )
    console.print(f"champion is v{result.champion_version}")
    if result.kfp_run_url:
        console.print(f"KFP run: {result.kfp_run_url}")


release_app = typer.Typer(
    help="The release controller: shadow, live gate, bake (docs/releases.md).", no_args_is_help=True
)
app.add_typer(release_app, name="release")


@release_app.command("status")
def release_status(
    as_json: Annotated[
        bool, typer.Option("--json", help="The controller's state as one JSON object.")
    ] = False,
) -> None:
    """Phase, champion, challenger, since when, the live numbers so far and what the controller waits for."""
    import time

    settings = Settings()
    release = status_of.release_status(settings)
    if release is None:
        fail(
            f"the retrainer does not answer at {settings.retrainer_url}/api/release: is the stack up (`sandbox status`)?"
        )
    if as_json:
        print(json.dumps(release))
        return
    console.print(status_of.release_line(release))
    since = f"{time.time() - release['since']:.0f}s ago" if release.get("since") else "-"
    table = Table(show_header=False, box=None)
    for key, value in [
        ("phase", release["phase"]), ("champion", release.get("champion")), ("challenger", release.get("challenger")),
        ("previous", release.get("previous")), ("since", since), ("waits for", release["waits_for"]),
    ]:  # fmt: skip
        table.add_row(key, "-" if value is None else str(value))
    for key, value in (release.get("live") or {}).items():
        table.add_row(f"live {key}", json.dumps(value) if isinstance(value, dict) else str(value))
    console.print(table)
    for outcome in reversed(release.get("outcomes") or []):
        console.print(f"  v{outcome['version']} {outcome['outcome']}: {outcome['reason']}")
    if not release.get("alive", True):
        fail(f"the release controller died: {release.get('died')} (restart the retrainer)")
    if release.get("error"):
        err.print(f"[yellow]warning:[/] its last poll failed: {release['error']}")


@app.command()
def rollback(
    to: Annotated[
        str | None, typer.Option("--to", help="The version to serve (default: `previous`).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The answer as one JSON object.")] = False,
) -> None:
    """Move `champion` back to `previous` (or --to VERSION) once it loads and passes serving's smoke test."""
    import httpx

    settings = Settings()
    try:
        # The load and smoke test download the model: give them time.
        response = httpx.post(f"{settings.retrainer_url}/api/rollback", json={"to": to}, timeout=120)
    except httpx.HTTPError as exc:
        fail(
            f"the retrainer does not answer at {settings.retrainer_url} ({exc}): is the stack up (`sandbox status`)?"
        )
    answer = (
        response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    )
    if response.status_code != 200:
        if as_json:
            print(
                json.dumps(
                    {"error": answer.get("error", response.text[:300]), "status": response.status_code}
                )
            )
            raise typer.Exit(1)
        fail(f"rollback refused: {answer.get('error', response.text[:300])}")
    if as_json:
        print(json.dumps(answer))
        return
    console.print(f"champion is v{answer['champion']} (was v{answer['was']}); serving swaps at its next poll")


@app.command("compile")
def compile_(
    output: Annotated[Path, typer.Option(help="Where to write the KFP IR YAML.")] = Path(
        "build/train-and-register.yaml"
    ),
) -> None:
    """Compile train-and-register to KFP IR (what the cluster runs)."""
    from pipelines.run import compile_pipeline

    try:
        path = compile_pipeline(output)
    except OSError as exc:
        fail(f"cannot write {output} ({exc.strerror}); pass --output a path in a writable directory")
    console.print(f"wrote {path}")


@app.command()
def demo(
    as_json: Annotated[
        bool, typer.Option("--json", help="Last line: one JSON object with the timings.")
    ] = False,
    story: Annotated[
        str,
        typer.Option(
            help="covariate-shift: the world changes, the loop retrains and recovers. upstream-bug: a client "
            "sends income in thousands, a human is paged, nothing retrains, the champion stays. bad-release: a "
            "version trained on rows with inverted labels (label_bug) passes the offline gate, the live gate "
            "rejects it in shadow, it answers no client; then a version trained for a market launch whose labels "
            "were inverted (launch_label_bug) passes both gates before the launch, serves, and is rolled back "
            "by its bake once the launch's traffic comes."
        ),
    ] = "covariate-shift",
    scenario: Annotated[
        str,
        typer.Option(
            help=f"The covariate-shift story's incident: {DRIFT_HELP}. The story waits for DataDriftDetected: "
            "covariate_shift and label_shift fire it (docs/loop-by-hand.md)."
        ),
    ] = "covariate_shift",
    severity: Annotated[float, typer.Option(help=SEVERITY_HELP)] = 1.0,
    rps: Annotated[float, typer.Option(help="Traffic rate, requests/s.")] = 30.0,
    rows_per_request: Annotated[
        int | None, typer.Option(help="Loan applications per request (default: the demo's, 4).")
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds the alert may take to fire; the clean verdicts get a quarter of it plus the time to "
            "fill a window, v2's clean verdict half plus that time, the alert resolving half (upstream-bug: the "
            "retraining held a quarter, the alert resolving half, each plus that time). Fixed: the stack "
            "300 s; serving's loads, the retrainer's start and the human notification 120 s each; the "
            "retraining SANDBOX_RETRAIN_TIMEOUT_SECONDS; the live gate SANDBOX_RELEASE_SHADOW_DEADLINE_SECONDS "
            "+ 60 s; the bake SANDBOX_RELEASE_BAKE_SECONDS + 120 s."
        ),
    ] = 600.0,
) -> None:
    """The whole loop, timed: up, train v1, clean traffic, incident, alert, retrain, v2 in shadow, live gate,
    v2 serves, alert resolves, v2 baked.

    With --story upstream-bug: up, train v1, clean traffic, a unit change, DataQualityDegraded, a human notified, retraining held, the fix, the alert resolves, v1 still the champion.

    With --story bad-release: up, train v1, clean traffic, a version trained on broken labels passes the
    offline gate into shadow, the live gate rejects it, v1 still the champion; then a version trained for
    a market launch with broken labels passes both gates and serves, the launch's traffic comes, the bake
    rolls it back to v1 by itself and ModelRolledBack pages a human.

    The demo's short intervals stay in force until the next `sandbox up` (docs/troubleshooting.md).
    """
    from pipelines.data import DataError
    from pipelines.scenarios import check_scenario
    from sandbox.demo import DEMO_ROWS_PER_REQUEST, STORIES, Timeline, demo_settings, run_demo
    from sandbox.traffic import check_traffic

    if story not in STORIES:
        fail(f"unknown story {story!r}; choose one of {', '.join(STORIES)} (see `sandbox demo --help`)")
    if rows_per_request is None:  # the default lives in sandbox.demo, imported here: it pulls in httpx
        rows_per_request = DEMO_ROWS_PER_REQUEST
    try:
        check_scenario(scenario, severity)
        check_traffic(rps, 60, scenario, severity, rows_per_request)
    except DataError as exc:
        fail(str(exc))
    if scenario == "none":
        fail("the demo needs an incident: pick a drift scenario (e.g. --scenario covariate_shift)")
    out = err if as_json else console
    settings = demo_settings(story=story)

    def on_event(event: dict) -> None:
        detail = f"  [dim]{event['detail']}[/]" if event["detail"] else ""
        out.print(f"[bold]{event['t']:7.1f}s[/]  {event['event']}{detail}")

    with out.status("the demo...") as spinner:
        result = run_demo(
            settings, Timeline(on_event=on_event), scenario=scenario, severity=severity, rps=rps,
            rows_per_request=rows_per_request, timeout=timeout, on_status=spinner.update, story=story,
        )  # fmt: skip
    summary = result.summary()
    table = Table(title="the loop", show_header=False)
    for key, value in summary.items():
        table.add_row(key, str(value))
    out.print(table)
    out.print(
        f"the stack keeps running: [bold]sandbox status[/], monitor {settings.monitor_url}, stop with [bold]sandbox down[/]"
    )
    if as_json:
        print(json.dumps(summary))
    if not result.completed:
        fail(f"the story did not complete at step '{result.failed_step}': {result.error}")


if __name__ == "__main__":
    app()
