"""The Grafana dashboards' PromQL against a live Prometheus (their JSON model: tests/manifests/test_dashboard_model.py).

Every expression (panels, template variables, annotations, and the alert rules) runs against a
real Prometheus scraping the real monitor and retrainer services and a serving exporter built from
serving's own metric definitions and BentoML's own HTTP metrics middleware: each one must parse,
evaluate and return data.
"""

from __future__ import annotations

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
from tests.manifests.dashboards import (
    RULES,
    all_expressions,
    dashboards,
    label_values,
    rule_expressions,
    variable_query,
)
from tests.support.processes import free_port, start_process_group, stop_process_group, wait_http, wait_until

pytestmark = pytest.mark.integration


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
from pipelines.result import TrainResult
from sandbox.settings import Settings
from services.retrainer.app import create_app

class Runner:
    def run(self, params, on_step=None, log_name=None):
        time.sleep(0.5)
        return TrainResult("r", params.model_name, "2", {}, True, "stand-in", "2")

app = create_app(Settings(), runner=Runner(), release_controller=False)  # no MLflow here to poll
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
        "SANDBOX_HOME": str(tmp / "home"),
        "SANDBOX_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",  # nothing listens
        "SANDBOX_ALERTMANAGER_PORT": str(free_port()),  # nothing listens
        "SANDBOX_RETRAINER_PORT": str(ports["retrainer"]),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    logs = []

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        logs.append(tmp / f"{name}.log")
        return start_process_group(cmd, logs[-1], env)

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


def test_template_variables_find_their_label_values(prometheus):
    for name, dashboard in dashboards().items():
        for variable in dashboard["templating"]["list"]:
            selector, label = label_values(variable_query(variable))
            series = httpx.get(f"{prometheus}/api/v1/series", params={"match[]": selector}, timeout=10).json()
            values = {s.get(label) for s in series["data"]} - {None}
            assert values, f"{name} ${variable['name']}: no {label} values on {selector}"


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
