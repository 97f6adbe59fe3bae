"""The Grafana dashboards (monitoring/grafana/dashboards/*.json).

No Grafana runs here (there is no Debian package), so the dashboards are checked in two ways:
- their JSON model: panels complete, on the ``prometheus`` datasource uid, on the grid, variables defined;
  every metric an expression names is defined in services/ (or is a Prometheus / BentoML built-in);
- every PromQL expression (panels, template variables, annotations, and the alert rules) against a
  real Prometheus scraping the real monitor and retrainer services and a serving exporter built from
  serving's own metric definitions and BentoML's own HTTP metrics middleware: each one must parse,
  evaluate and return data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from pipelines.data import generate_loans
from pipelines.features import LABEL, LOAN_SCHEMA
from pipelines.scenarios import apply_scenario
from pipelines.train import features_only
from tests.conftest import free_port, wait_http
from tests.integration.serving_helpers import stop_process_group, wait_until

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "monitoring" / "grafana" / "dashboards"
RULES = REPO / "monitoring" / "prometheus" / "rules"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
EXPECTED = {"model-overview", "drift", "loop"}
PANEL_TYPES = {"row", "stat", "timeseries", "state-timeline", "bargauge", "table", "gauge", "heatmap", "text"}

# Grafana's own variables, replaced by concrete values before an expression goes to Prometheus.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}
# Series Prometheus makes itself.
PROMETHEUS_BUILTINS = {
    "ALERTS",
    "ALERTS_FOR_STATE",
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}
# BentoML's serving metrics (namespace bentoml_service): family -> type. Checked against the
# installed BentoML by test_bentoml_metric_families_exist_in_the_installed_bentoml.
BENTOML_NAMESPACE = "bentoml_service"
BENTOML_FAMILIES = {
    "request_duration_seconds": "Histogram",
    "request_total": "Counter",
    "request_in_progress": "Gauge",
    "last_request_timestamp_seconds": "Gauge",
    "adaptive_batch_size": "Histogram",
}
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "inf", "nan",
}  # fmt: skip


# --- reading the dashboards ------------------------------------------------------------------------


def load(name: str) -> dict:
    return json.loads((DASHBOARDS / f"{name}.json").read_text())


def dashboards() -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, including those inside collapsed rows."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def variable_query(variable: dict) -> str:
    query = variable.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else query


def label_values(query: str) -> tuple[str, str] | None:
    """``label_values(<selector>, <label>)`` -> (selector, label); None for ``label_values(<label>)``."""
    match = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", query)
    return (match.group(1), match.group(2)) if match else None


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, query variable and annotation of a dashboard."""
    out = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            out.append(
                (f"panel {panel['id']} {panel['title']!r} {target.get('refId')}", target.get("expr", ""))
            )
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable_query(variable)
            selector = label_values(query)
            out.append((f"variable ${variable['name']}", selector[0] if selector else query))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("builtIn"):
            continue
        out.append((f"annotation {annotation['name']!r}", annotation.get("expr", "")))
    return out


def rule_expressions() -> list[tuple[str, str]]:
    out = []
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((f"{path.name} {rule.get('alert') or rule.get('record')}", rule["expr"]))
    return out


def all_expressions() -> list[tuple[str, str, str]]:
    """(source, where, expression with every variable replaced by a concrete value)."""
    out = []
    for name, dashboard in dashboards().items():
        values = {**GRAFANA_VARIABLES}
        for variable in dashboard.get("templating", {}).get("list", []):
            values[variable["name"]] = variable.get("allValue") or ".*"
        out.extend((name, where, substitute(expr, values)) for where, expr in queries(dashboard))
    out.extend(("rules", where, expr) for where, expr in rule_expressions())
    return out


def substitute(expr: str, values: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"undefined variable ${name} in {expr!r}")
        return values[name]

    # $name, ${name} and ${name:format}
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, keywords, labels or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        if match.group(1).lower() not in PROMQL_KEYWORDS:
            names.add(match.group(1))
    return names


# --- metric names the code defines ------------------------------------------------------------------

METRIC_DEFINITION = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*[\"']([A-Za-z_:][\w:]*)[\"']"
)


def exposed_names(kind: str, name: str) -> set[str]:
    """The sample names prometheus_client exposes for a metric defined as ``kind(name)``."""
    if kind == "Counter":
        base = name.removesuffix("_total")
        return {f"{base}_total", f"{base}_created"}
    if kind == "Histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "Summary":
        return {name, f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "Info":
        return {f"{name}_info"}
    return {name}


def defined_in_code() -> set[str]:
    names = set()
    for path in (REPO / "services").rglob("*.py"):
        for kind, name in METRIC_DEFINITION.findall(path.read_text()):
            names |= exposed_names(kind, name)
    return names


def known_names() -> set[str]:
    bentoml = set()
    for family, kind in BENTOML_FAMILIES.items():
        bentoml |= exposed_names(kind, f"{BENTOML_NAMESPACE}_{family}")
    return defined_in_code() | bentoml | PROMETHEUS_BUILTINS


# --- the JSON model ----------------------------------------------------------------------------------


def test_the_three_dashboards_exist_with_unique_uids_and_titles():
    found = dashboards()
    assert set(found) == EXPECTED
    uids = [d["uid"] for d in found.values()]
    titles = [d["title"] for d in found.values()]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)
    for name, dashboard in found.items():
        assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"]), name  # Grafana: at most 40 characters
        assert dashboard["schemaVersion"] >= 36, name  # Grafana 9+ model (datasource as {type, uid})
        assert dashboard.get("id") is None, f"{name}: provisioned dashboards carry no database id"
        assert "mlops-sandbox" in dashboard["tags"], name
        assert dashboard["time"]["from"].startswith("now-") and dashboard["refresh"], name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_panel_is_complete_and_queries_the_prometheus_datasource(name):
    dashboard = load(name)
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), f"panel ids not unique: {ids}"
    assert sum(p["type"] != "row" for p in panels) >= 8
    for panel in panels:
        where = f"{name}: panel {panel['id']} {panel.get('title')!r}"
        assert panel["type"] in PANEL_TYPES, where
        assert panel.get("title"), where
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{where}: say what the panel shows"
        assert panel.get("datasource") == DATASOURCE, where
        targets = panel.get("targets")
        assert targets, f"{where}: no targets"
        ref_ids = [t.get("refId") for t in targets]
        assert all(ref_ids) and len(set(ref_ids)) == len(ref_ids), where
        for target in targets:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, where
            assert target.get("expr", "").strip(), f"{where} {target.get('refId')}: empty expr"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
            assert label_values(variable_query(variable)), (
                f"{variable['name']}: label_values(<metric>, <label>)"
            )
    for annotation in dashboard["annotations"]["list"]:
        if not annotation.get("builtIn"):
            assert annotation["datasource"] == DATASOURCE and annotation["expr"], annotation["name"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels_sit_on_the_grid_without_overlapping(name):
    cells: dict[tuple[int, int], str] = {}
    for panel in load(name)["panels"]:  # the top level: the grid Grafana lays out
        pos = panel["gridPos"]
        assert all(isinstance(pos.get(k), int) for k in "hwxy"), panel["title"]
        assert pos["w"] >= 1 and pos["h"] >= 1 and pos["x"] >= 0 and pos["y"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']!r} is wider than the 24-column grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_variable_an_expression_uses_is_defined(name):
    dashboard = load(name)
    defined = {v["name"] for v in dashboard["templating"]["list"]} | set(GRAFANA_VARIABLES)
    for where, expr in queries(dashboard):
        used = {a or b for a, b in re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", expr)}
        assert used <= defined, f"{name} {where}: undefined {used - defined}"


def test_metric_name_extraction():
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(bentoml_service_request_duration_seconds_bucket{endpoint="/predict"}[5m])))'
    ) == {"bentoml_service_request_duration_seconds_bucket"}
    assert metric_names(
        '(time() - sandbox_monitor_last_evaluation_timestamp_seconds > 300) or up{job="monitor"} == 0'
    ) == {"sandbox_monitor_last_evaluation_timestamp_seconds", "up"}
    assert metric_names(
        'max by (alertname) (ALERTS{alertstate="firing"}) * 2 or max without (instance) (a:b_c offset 5m) unless on (x) group_left (y) z'
    ) == {"ALERTS", "a:b_c", "z"}
    expr = 'count(x) or vector(0) > bool 1e3 and label_replace(y, "d", "$1", "s", "(.*)")'
    assert metric_names(expr) == {"x", "y"}


def test_every_metric_an_expression_names_is_defined_in_the_code():
    known = known_names()
    # The checker is not vacuous: the code defines what the services export, and a typo is unknown.
    assert {"sandbox_drift_share", "sandbox_predictions_total", "sandbox_retrain_runs_total"} <= known
    assert "sandbox_drift_shares" not in known and "sandbox_predictions" not in known
    unknown = [
        f"{source} {where}: {sorted(metric_names(expr) - known)}"
        for source, where, expr in all_expressions()
        if metric_names(expr) - known
    ]
    assert not unknown, "metrics no service exports (typo?):\n" + "\n".join(unknown)
    named = set().union(*(metric_names(expr) for _, _, expr in all_expressions()))
    # Each service's metrics have a place on the dashboards.
    prefixes = (
        "bentoml_service_",
        "sandbox_model_",
        "sandbox_predictions",
        "sandbox_drift",
        "sandbox_retrain_",
    )
    for prefix in prefixes:
        assert any(n.startswith(prefix) for n in named), prefix


def test_bentoml_metric_families_exist_in_the_installed_bentoml():
    import _bentoml_impl
    import bentoml

    sources = "".join(
        path.read_text(errors="ignore")
        for root in (Path(bentoml.__file__).parent, Path(_bentoml_impl.__file__).parent)
        for path in root.rglob("*.py")
    )
    assert f'"{BENTOML_NAMESPACE}"' in sources
    for family, kind in BENTOML_FAMILIES.items():
        assert re.search(rf'\.{kind}\(\s*namespace=[^)]*?name="{family}"', sources, re.S), family


# --- a live Prometheus ------------------------------------------------------------------------------

# Serving's metrics without starting `bentoml serve` (15-45 s here, and it needs a registered model
# before its sandbox_* series exist): serving's own create_metrics(), and BentoML's own HTTP metrics
# middleware around a stand-in endpoint, driven with /predict answers of several status codes.
SERVING_EXPORTER = """
import asyncio, random, sys
from prometheus_client import Histogram, start_http_server
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.context import server_context
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from services.serving.service import Serving, create_metrics

Serving.inject_config()  # the service's configuration, as `bentoml serve` loads it (metrics namespace)
server_context.bento_name = server_context.service_name = Serving.name
NAMESPACE = BentoMLContainer.api_server_config.metrics.namespace.get()
MODEL = "loan-default"

async def endpoint(scope, receive, send):
    status = int(scope["query_string"] or b"200")
    if status == 200 and scope["path"] == "/predict" and random.random() < 0.05:
        await asyncio.sleep(0.6)  # a slow tail: p99 over HighPredictionLatency's 0.5 s
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})

async def call(app, path, status):
    scope = {"type": "http", "method": "POST", "path": path, "query_string": str(status).encode(), "headers": []}
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        pass
    await app(scope, receive, send)

async def main():
    app = RunnerTrafficMetricsMiddleware(endpoint, namespace=NAMESPACE)
    metrics = create_metrics()
    batch = Histogram(namespace=NAMESPACE, name="adaptive_batch_size", documentation="Service adaptive batch size",
                      labelnames=["runner_name", "worker_index", "method_name", "service_version", "service_name"],
                      buckets=[1, 2, 4, 8, 16, 32, 64])
    metrics["load_failures"].labels(MODEL).inc()
    start_http_server(int(sys.argv[1]), addr="127.0.0.1")
    for i in range(1_000_000):
        if i % 20 == 0:  # the watcher swaps in a new champion now and then: v1, v2, v1, ...
            old, version = ("2", "1") if i % 40 == 0 else ("1", "2")
            metrics["info"].labels(MODEL, old).set(0)
            metrics["info"].labels(MODEL, version).set(1)
            metrics["swaps"].labels(MODEL).inc()
        statuses = [200] * 16 + [422, 413, 503, 500]
        await asyncio.gather(*(call(app, "/predict", s) for s in statuses), call(app, "/model", 200))
        for _ in range(16):
            p = random.random()
            metrics["predictions"].labels(MODEL, version, str(int(p >= 0.5))).inc()
            metrics["probability"].labels(MODEL).observe(p)
        for outcome, n in (("sent", 16), ("retried", 1), ("dropped_queue_full", 0), ("dropped_undeliverable", 0)):
            metrics["feed"].labels(outcome).inc(n)
        batch.labels(Serving.name, "1", "predict", "not available", Serving.name).observe(random.randint(1, 16))
        await asyncio.sleep(0.2)

asyncio.run(main())
"""

# The real monitor app; only the reference sample comes from the data generator instead of MLflow.
MONITOR = """
import sys, uvicorn
from pipelines.data import generate_loans
from sandbox.settings import Settings
from services.monitor.app import MonitorConfig, create_app
reference = generate_loans(5_000, seed=0)
app = create_app(Settings(), MonitorConfig(interval_seconds=1, window_rows=2_000, min_rows=1_000))
app.state.monitor.reference_loader = lambda tracking_uri, model_name, version: reference
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""

# The real retrainer app; the pipeline run is a stand-in that promotes at once.
RETRAINER = """
import sys, time, uvicorn
from pipelines.params import TrainResult
from sandbox.settings import Settings
from services.retrainer.app import create_app

class Runner:
    def run(self, params, on_step=None, log_name=None):
        time.sleep(0.5)
        return TrainResult("r", params.model_name, "2", {}, True, "stand-in", "2")

app = create_app(Settings(), runner=Runner())
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def prometheus_config(tmp: Path, ports: dict[str, int]) -> Path:
    """Scrape every second; the rules as they are but with ``for: 0s``, so the alerts fire in this test."""
    rules = tmp / "rules"
    rules.mkdir()
    for path in RULES.glob("*.yml"):
        document = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["for"] = "0s"
        (rules / path.name).write_text(yaml.safe_dump(document))

    def job(name: str, *targets: int) -> dict:
        return {"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in targets]}]}

    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules / "*.yml")],
        "scrape_configs": [
            job("prometheus", ports["prometheus"]),
            job("serving", ports["serving"], ports["serving_down"]),  # one instance down: ServingDown fires
            job("monitor", ports["monitor"]),
            job("retrainer", ports["retrainer"]),
        ],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def records(frame, version: str) -> list[dict]:
    """Inference records as serving sends them (the DESIGN contract); every other prediction is wrong."""
    features = features_only(frame, LOAN_SCHEMA)
    rows = features.astype(object).where(features.notna(), None)
    out = []
    for i, (row, label) in enumerate(
        zip(rows.to_dict(orient="records"), frame[LABEL].astype(int), strict=True)
    ):
        prediction = label if i % 2 else 1 - label
        out.append(
            {
                "request_id": uuid.uuid4().hex, "ts": time.time(), "model_version": version, "features": row,
                "prediction": prediction, "probability": 0.8 if prediction else 0.2, "label": label,
            }
        )  # fmt: skip
    return out


def webhook(status: str, fingerprint: str) -> dict:
    """Alertmanager's webhook payload (version 4) with one DataDriftDetected alert."""
    alert = {
        "status": status,
        "labels": {"alertname": "DataDriftDetected", "action": "retrain", "severity": "warning"},
        "annotations": {"summary": "test"},
        "startsAt": datetime.now(UTC).isoformat(),
        "fingerprint": fingerprint,
    }
    return {"version": "4", "status": status, "receiver": "retrainer", "alerts": [alert]}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """A real Prometheus scraping the monitor, the retrainer and serving's metrics, with traffic flowing."""
    if not (prometheus_binary := shutil.which("prometheus")):
        pytest.fail("prometheus is missing: run `make setup` (Debian: apt-get install prometheus)")
    tmp = tmp_path_factory.mktemp("dashboards")
    ports = {name: free_port() for name in ("prometheus", "serving", "serving_down", "monitor", "retrainer")}
    env = {
        **os.environ,
        "SANDBOX_HOME": str(tmp / "home"),
        "SANDBOX_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",  # nothing listens
        "SANDBOX_ALERTMANAGER_PORT": str(free_port()),  # nothing listens
        "SANDBOX_RETRAINER_PORT": str(ports["retrainer"]),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    logs = []

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        log = tmp / f"{name}.log"
        logs.append(log)
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )

    procs = [
        start("prometheus", [
            prometheus_binary, f"--config.file={prometheus_config(tmp, ports)}",
            f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
        ]),
        start("serving", [sys.executable, "-c", SERVING_EXPORTER, str(ports["serving"])]),
        start("monitor", [sys.executable, "-c", MONITOR, str(ports["monitor"])]),
        start("retrainer", [sys.executable, "-c", RETRAINER, str(ports["retrainer"])]),
    ]  # fmt: skip

    def logs_text() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs)

    url = f"http://127.0.0.1:{ports['prometheus']}"
    monitor, retrainer = (f"http://127.0.0.1:{ports[n]}" for n in ("monitor", "retrainer"))
    try:
        for health in (f"{monitor}/healthz", f"{retrainer}/healthz", f"{url}/-/ready"):
            wait_http(health, timeout=120)
        # Drifted traffic with labels (every other prediction wrong): drift, quality and their alerts.
        frame = apply_scenario(generate_loans(1_200, seed=5), "covariate_shift", 2.0, seed=5)
        sent = records(frame, "2")
        for batch in (sent[:600], sent[600:], sent[:10]):  # the last one: duplicates
            assert httpx.post(f"{monitor}/ingest", json={"records": batch}, timeout=60).status_code == 200
        labels = [{"request_id": r["request_id"], "label": r["label"]} for r in sent[:300]]
        assert httpx.post(f"{monitor}/labels", json={"labels": labels}, timeout=30).status_code == 200
        # A retraining (promoted by the stand-in), a resolved notification, one in the cooldown.
        for payload in (webhook("firing", "a"), webhook("resolved", "a"), webhook("firing", "b")):
            assert httpx.post(f"{retrainer}/alerts", json=payload, timeout=10).status_code == 202

        def targets_up() -> int:
            targets = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            return sum(t["health"] == "up" for t in targets)

        assert wait_until(lambda: targets_up() == 4, timeout=60), logs_text()  # all but serving_down
        yield url
    except Exception:
        print(logs_text())
        raise
    finally:
        for proc in procs:
            stop_process_group(proc)


def query(url: str, expr: str) -> httpx.Response:
    return httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=30)


@pytest.mark.integration
def test_every_expression_parses_and_returns_data_in_a_live_prometheus(prometheus):
    expressions: dict[str, list[str]] = {}  # the same expression may sit in several places
    for source, where, expr in all_expressions():
        expressions.setdefault(expr, []).append(f"{source} {where}")
    assert len(expressions) >= 50

    def checked(response: httpx.Response, expr: str) -> list:
        """The result; a parse or evaluation error (400 bad_data, 422 execution) fails with its reason."""
        assert response.status_code == 200, f"{expressions[expr]}: {expr}\n{response.text}"
        assert response.json()["status"] == "success", f"{expressions[expr]}: {response.text}"
        return response.json()["data"]["result"]

    # Each one returns data once the scrapes and evaluations are in: a wrong label value or a metric
    # nobody exports would be an empty panel. (The alert rules may rightly be empty: no alert.)
    pending = {expr for expr, places in expressions.items() if any(not p.startswith("rules") for p in places)}
    deadline = time.monotonic() + 60
    while True:
        pending = {expr for expr in pending if not checked(query(prometheus, expr), expr)}
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not pending, "expressions without data:\n" + "\n".join(f"{expressions[e]}: {e}" for e in pending)

    # And each one evaluates over a range too, as Grafana asks for a panel's time series.
    now = time.time()
    for expr in expressions:
        params = {"query": expr, "start": now - 120, "end": now, "step": "5s"}
        checked(httpx.get(f"{prometheus}/api/v1/query_range", params=params, timeout=30), expr)
    for rule in [expr for expr, places in expressions.items() if all(p.startswith("rules") for p in places)]:
        checked(query(prometheus, rule), rule)


@pytest.mark.integration
def test_template_variables_find_their_label_values(prometheus):
    for name, dashboard in dashboards().items():
        for variable in dashboard["templating"]["list"]:
            selector, label = label_values(variable_query(variable))
            series = httpx.get(f"{prometheus}/api/v1/series", params={"match[]": selector}, timeout=10).json()
            values = {s.get(label) for s in series["data"]} - {None}
            assert values, f"{name} ${variable['name']}: no {label} values on {selector}"


@pytest.mark.integration
def test_the_alert_rules_are_healthy_and_fire_on_this_traffic(prometheus):
    rules = [
        rule
        for group in httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        for rule in group["rules"]
    ]
    assert {r["name"] for r in rules} == {where.split(" ", 1)[1] for where, _ in rule_expressions()}
    for rule in rules:
        assert rule["health"] == "ok" and not rule.get("lastError"), rule

    def firing() -> set[str]:
        result = query(prometheus, 'ALERTS{alertstate="firing"}').json()["data"]["result"]
        return {s["metric"]["alertname"] for s in result}

    # Drift and poor labels from the monitor, a down serving instance, the slow tail of /predict.
    expected = {"DataDriftDetected", "ModelQualityDegraded", "ServingDown", "HighPredictionLatency"}
    wait_until(lambda: firing() >= expected, timeout=45, interval=2)
    assert firing() >= expected
    assert "MonitorStale" not in firing()
