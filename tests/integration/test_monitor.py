"""A real monitor process (uvicorn) against a real MLflow server with a registered model."""

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from pipelines.data import generate_loans
from pipelines.features import LABEL, LOAN_SCHEMA
from pipelines.scenarios import apply_scenario
from pipelines.train import features_only
from sandbox.local_stack import venv_bin
from sandbox.settings import Settings
from services.monitor.app import create_app
from services.monitor.evaluator import MonitorConfig
from tests.integration.serving_helpers import metric_value, register
from tests.support.processes import free_port, start_process_group, stop_process_group, wait_until

pytestmark = pytest.mark.integration
MODEL = "monitor-it"
# A short interval for the test; windows as in production (see drift.py on why 1,000 rows).
LAUNCH = (
    "import uvicorn\n"
    "from sandbox.settings import Settings\n"
    "from services.monitor.app import create_app\n"
    "from services.monitor.evaluator import MonitorConfig\n"
    "app = create_app(Settings(), MonitorConfig(interval_seconds=1, window_rows=2000, min_rows=1000))\n"
    "uvicorn.run(app, host='127.0.0.1', port={port}, log_level='info')\n"
)


def start_monitor(
    home: Path, mlflow_uri: str, port: int, factory_cli: bool = False, model: str = MODEL
) -> subprocess.Popen:
    env = {
        "SANDBOX_HOME": str(home),
        "SANDBOX_MLFLOW_TRACKING_URI": mlflow_uri,
        "SANDBOX_MODEL_NAME": model,
        "SANDBOX_ALERTMANAGER_PORT": str(free_port()),  # nothing listens: the page says "unreachable"
        "SANDBOX_RETRAINER_PORT": str(free_port()),  # likewise, not a stack that may run on 8002
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    if factory_cli:  # exactly how the stack runs it
        cmd = [venv_bin("uvicorn"), "services.monitor.app:create_app", "--factory"]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
    else:
        cmd = [sys.executable, "-c", LAUNCH.format(port=port)]
    return start_process_group(cmd, home / f"monitor-{port}.log", env, append=True)


def wait_healthy(url: str, proc: subprocess.Popen, home: Path) -> None:
    ok = wait_until(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, timeout=240)
    logs = "\n".join(p.read_text()[-3000:] for p in home.glob("monitor-*.log"))
    assert ok and proc.poll() is None, logs


@contextlib.contextmanager
def running_monitor(home: Path, mlflow_uri: str, model: str = MODEL) -> Iterator[str]:
    """A monitor on a free port, healthy before its URL is given; stopped after."""
    port = free_port()
    proc = start_monitor(home, mlflow_uri, port, model=model)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, home)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)


def records_of(frame: pd.DataFrame, version: str, flip_every: int = 0) -> list[dict]:
    """Inference records as serving sends them; the prediction is the label, flipped every ``flip_every``-th."""
    features = features_only(frame, LOAN_SCHEMA)
    rows = features.astype(object).where(features.notna(), None).to_dict(orient="records")
    out = []
    for i, (row, label) in enumerate(zip(rows, frame[LABEL].astype(int), strict=True)):
        prediction = 1 - label if flip_every and i % flip_every == 0 else label
        out.append(
            {
                "request_id": uuid.uuid4().hex,
                "ts": time.time(),
                "model_version": version,
                "features": row,
                "prediction": int(prediction),
                "probability": 0.8 if prediction else 0.2,
                "label": int(label),  # not part of the contract: the monitor ignores it, the test uses it
            }
        )
    return out


def ingest(url: str, records: list[dict], batch: int = 500, rejected: list[dict] = ()) -> tuple[int, int]:
    inserted = duplicates = 0
    for start in range(0, len(records), batch):
        body = {"records": records[start : start + batch], **({"rejected": rejected} if start == 0 else {})}
        response = httpx.post(f"{url}/ingest", json=body, timeout=60)
        assert response.status_code == 200, response.text
        inserted += response.json()["inserted"]
        duplicates += response.json()["duplicates"]
    return inserted, duplicates


def counts(url: str) -> dict:
    status = httpx.get(f"{url}/api/status", timeout=30).json()
    return {**status["store"], "rejected": status["rejected"]["stored"]}


@pytest.fixture(scope="module")
def version(mlflow_server):
    return register(mlflow_server, MODEL, seed=0)


@pytest.fixture(scope="module")
def monitor(mlflow_server, version, tmp_path_factory):
    with running_monitor(tmp_path_factory.mktemp("monitor"), mlflow_server) as url:
        yield url


def test_ingest_stores_once_per_request_id(monitor, version):
    before = counts(monitor)["records"]
    records = records_of(generate_loans(3, seed=1), version)
    assert ingest(monitor, records) == (3, 0)
    assert ingest(monitor, records + records[:1]) == (0, 4)
    assert counts(monitor)["records"] == before + 3


def test_labels_update_and_unknown_ids_are_listed(monitor):
    records = records_of(
        generate_loans(2, seed=2), "older"
    )  # not the served version: kept out of its quality
    ingest(monitor, records)
    before = counts(monitor)["labelled"]
    labels = [{"request_id": r["request_id"], "label": r["label"]} for r in records]
    response = httpx.post(
        f"{monitor}/labels", json={"labels": [*labels, {"request_id": "never-seen", "label": 1}]}
    )
    assert response.status_code == 200
    assert response.json() == {"updated": 2, "unknown": ["never-seen"]}
    assert counts(monitor)["labelled"] == before + 2


@functools.cache
def _valid_record() -> dict:
    return {k: v for k, v in records_of(generate_loans(1, seed=3), "1")[0].items() if k != "label"}


def _valid(**changes) -> dict:
    return {**_valid_record(), **changes}


def _json(value) -> bytes:
    return json.dumps(value).encode()


def _chunked(*parts: bytes):
    """A body without Content-Length (httpx sends a generator chunked)."""
    yield from parts


JSON = {"content-type": "application/json"}


BAD_INPUT = [
    # name, path, httpx.post kwargs, status, words the reason must contain
    ("garbage JSON", "/ingest", {"content": b'{"records": [', "headers": JSON}, 422, "JSON decode error"),
    ("not an object", "/ingest", {"json": [1, 2]}, 422, "valid dictionary"),
    ("no records key", "/ingest", {"json": {"rows": []}}, 422, "records"),
    ("empty batch", "/ingest", {"json": {"records": []}}, 422, "nothing to ingest"),
    ("empty rejected too", "/ingest", {"json": {"records": [], "rejected": []}}, 422, "nothing to ingest"),
    ("rejected: unknown reason", "/ingest", {"json": {"rejected": [{"ts": 1.0, "reason": "typo", "field": None, "row": None}]}}, 422, "rejected.0.reason"),
    ("rejected: no ts", "/ingest", {"json": {"rejected": [{"reason": "other", "field": None, "row": None}]}}, 422, "rejected.0.ts"),
    ("rejected: row a list", "/ingest", {"json": {"rejected": [{"ts": 1.0, "reason": "other", "field": None, "row": [1]}]}}, 422, "rejected.0.row"),
    ("rejected: a bad one spoils the records too", "/ingest", {"json": {"records": [_valid()], "rejected": [{"ts": "now", "reason": "other"}]}}, 422, "rejected.0.ts"),
    ("prediction a string", "/ingest", {"json": {"records": [_valid(prediction="1")]}}, 422, "prediction"),
    ("prediction a bool", "/ingest", {"json": {"records": [_valid(prediction=True)]}}, 422, "prediction"),
    ("ts a string", "/ingest", {"json": {"records": [_valid(ts="yesterday")]}}, 422, "ts"),
    ("probability above 1", "/ingest", {"json": {"records": [_valid(probability=1.5)]}}, 422, "probability"),
    ("features a list", "/ingest", {"json": {"records": [_valid(features=[1, 2])]}}, 422, "features"),
    ("feature value an object", "/ingest", {"json": {"records": [_valid(features={"age": {"x": 1}})]}}, 422, "features"),
    ("request_id a number", "/ingest", {"json": {"records": [_valid(request_id=7)]}}, 422, "request_id"),
    ("one bad record spoils the batch", "/ingest", {"json": {"records": [_valid(), _valid(model_version=None)]}}, 422, "records.1.model_version"),
    ("over 5,000 records", "/ingest", {"json": {"records": [_valid(request_id=str(i)) for i in range(5_001)]}}, 422, "at most 5000"),
    ("feature value NaN", "/ingest", {"content": b'{"records": [' + _json(_valid(features={"age": "NAN_HERE"})).replace(b'"NAN_HERE"', b"NaN") + b"]}", "headers": JSON}, 422, "finite number"),
    ("body over 5 MiB", "/ingest", {"content": b" " * (5 * 1024 * 1024 + 1), "headers": JSON}, 413, "exceeds 5242880 bytes"),
    ("chunked body over 5 MiB", "/ingest", {"content": _chunked(*[b" " * 1024 * 1024] * 6), "headers": JSON}, 413, "exceeds 5242880 bytes"),
    ("chunked body is read, then judged", "/ingest", {"content": _chunked(b'{"records": ', b"[]}"), "headers": JSON}, 422, "nothing to ingest"),
    ("not JSON", "/ingest", {"content": b"records=1", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415, "application/json"),
    ("labels: not JSON", "/labels", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "application/json"),
    ("labels: all ids unknown", "/labels", {"json": {"labels": [{"request_id": "nobody", "label": 1}]}}, 422, "none of the 1"),
    ("labels: label 2", "/labels", {"json": {"labels": [{"request_id": "x", "label": 2}]}}, 422, "label"),
    ("labels: label a string", "/labels", {"json": {"labels": [{"request_id": "x", "label": "1"}]}}, 422, "label"),
]  # fmt: skip


@pytest.mark.parametrize("name,path,kwargs,status,reason", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_refused_with_a_reason_and_nothing_stored(monitor, name, path, kwargs, status, reason):
    before = counts(monitor)
    response = httpx.post(f"{monitor}{path}", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    assert reason in response.json()["error"], response.text
    assert counts(monitor) == before


def test_drift_gauges_follow_the_traffic(monitor, version, mlflow_server):
    def metrics():
        return httpx.get(f"{monitor}/metrics", timeout=10).text

    def evaluated_after(t0):
        return lambda: metric_value(metrics(), "sandbox_monitor_last_evaluation_timestamp_seconds") > t0

    # Clean traffic: a full window of the served version, then the verdict is "no drift".
    clean = records_of(generate_loans(2_000, seed=11), version, flip_every=4)
    ingest(monitor, clean)
    labels = [{"request_id": r["request_id"], "label": r["label"]} for r in clean[:100]]
    assert httpx.post(f"{monitor}/labels", json={"labels": labels}).json()["updated"] == 100
    t0 = time.time()
    assert wait_until(evaluated_after(t0), timeout=240), httpx.get(f"{monitor}/api/status").text
    text = metrics()
    assert metric_value(text, "sandbox_monitor_verdict_sufficient") == 1
    assert metric_value(text, "sandbox_monitor_window_rows") == 2_000
    clean_share = metric_value(text, "sandbox_drift_share")
    assert clean_share <= 1 / 11, httpx.get(f"{monitor}/api/status").text
    # Predictions were the labels but for every 4th: live quality from the delayed labels.
    assert metric_value(text, "sandbox_live_accuracy") == pytest.approx(0.75)
    assert metric_value(text, "sandbox_monitor_labelled_rows") == 100

    # An incident: shifted scores and debt, a new region, missing values -> most of the window drifts.
    frame = generate_loans(2_000, seed=12)
    for scenario in ("covariate_shift", "new_category", "missing_values"):
        frame = apply_scenario(frame, scenario, 1.0, seed=12)
    ingest(monitor, records_of(frame, version))
    t1 = time.time()
    assert wait_until(evaluated_after(t1), timeout=120)
    text = metrics()
    assert metric_value(text, "sandbox_drift_share") >= 5 / 11 - 1e-9 > clean_share
    for feature in ("credit_score", "debt_to_income", "region", "income", "employment_years"):
        assert metric_value(text, "sandbox_feature_drifted", feature=feature) == 1, feature
    assert metric_value(text, "sandbox_feature_drifted", feature="age") == 0
    assert metric_value(text, "sandbox_monitor_evaluation_duration_seconds") > 0

    status = httpx.get(f"{monitor}/api/status").json()
    assert status["drift"]["verdict"] == "drift" and status["drift"]["model_version"] == version
    assert status["drift"]["features"]["region"]["drifted"] is True
    assert status["models"]["champion"]["version"] == version
    assert "roc_auc" in status["models"]["champion"]["metrics"]
    assert status["history"][0]["verdict"] == "drift"
    assert any(h["verdict"] == "no_drift" for h in status["history"])
    report = httpx.get(f"{monitor}/reports/latest", timeout=60)  # rendered now: seconds of plots
    assert report.status_code == 200 and "html" in report.headers["content-type"]
    page = httpx.get(f"{monitor}/")
    assert page.status_code == 200 and "DRIFT" in page.text and "credit_score" in page.text

    # A new version starts a fresh window: too few of its rows to judge, and no stale flags.
    ingest(monitor, records_of(generate_loans(50, seed=13), "next"))
    t2 = time.time()
    assert wait_until(evaluated_after(t2), timeout=120)
    text = metrics()
    assert metric_value(text, "sandbox_monitor_verdict_sufficient") == 0
    assert metric_value(text, "sandbox_feature_drifted") == 0  # no samples left
    assert "sandbox_drift_share NaN" in text


def test_every_acknowledged_record_survives_kill_9(mlflow_server, version, tmp_path):
    home, port = tmp_path, free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_monitor(home, mlflow_server, port, factory_cli=True)
    restarted = None
    try:
        wait_healthy(url, proc, home)
        acknowledged: list[dict] = []
        lock, stop = threading.Lock(), threading.Event()
        template = records_of(generate_loans(100, seed=21), version)

        def stream():
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    batch = [{**r, "request_id": uuid.uuid4().hex} for r in template]
                    try:
                        response = client.post(f"{url}/ingest", json={"records": batch})
                    except httpx.HTTPError:
                        return  # the server is gone
                    if response.status_code == 200:
                        with lock:
                            acknowledged.extend(batch)

        clients = [threading.Thread(target=stream) for _ in range(3)]
        for c in clients:
            c.start()
        assert wait_until(lambda: len(acknowledged) >= 3_000, timeout=120, interval=0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-stream: requests are in flight
        proc.wait(10)
        stop.set()
        for c in clients:
            c.join(30)
        acked_ids = {r["request_id"] for r in acknowledged}
        assert len(acked_ids) == len(acknowledged) >= 3_000

        restarted = start_monitor(home, mlflow_server, port, factory_cli=True)
        wait_healthy(url, restarted, home)
        # Every acknowledged record is there: sending them again only finds duplicates.
        for start in range(0, len(acknowledged), 5_000):
            batch = [
                {k: v for k, v in r.items() if k != "label"} for r in acknowledged[start : start + 5_000]
            ]
            response = httpx.post(f"{url}/ingest", json={"records": batch}, timeout=60)
            assert response.status_code == 200 and response.json() == {
                "inserted": 0,
                "duplicates": len(batch),
                "rejected": 0,
            }
        # ... and exactly once in the database itself.
        with sqlite3.connect(home / "monitor" / "monitor.db") as db:
            stored = db.execute("SELECT request_id, COUNT(*) FROM records GROUP BY request_id").fetchall()
        assert all(n == 1 for _, n in stored)
        assert acked_ids <= {rid for rid, _ in stored}
    finally:
        for p in (proc, restarted):
            if p is not None:
                stop_process_group(p)


def test_data_quality_fails_on_a_unit_change_and_keeps_it_out_of_retraining(monitor, version):
    """Income in thousands (inside the schema's range) plus rejected rows: quality fails, with numbers a
    person can act on; drift is judged apart; the broken window never reaches the retrainer's data."""
    from pipelines.production import fetch_records

    def metrics():
        return httpx.get(f"{monitor}/metrics", timeout=10).text

    def quality_after(t0):
        def judged():
            quality = httpx.get(f"{monitor}/api/status", timeout=10).json()["quality"]
            return (
                quality["evaluated_at"] is not None
                and quality["evaluated_at"] > t0
                and quality["ok"] is not None
            )

        return judged

    clean = records_of(generate_loans(2_000, seed=21), version)
    ingest(monitor, clean, batch=5_000)  # one call: no evaluation sees half a window
    # An evaluation is stamped when it starts: one started during the ingest read the window before
    # the commit (and the rejected rows after it), so only one started after the 200 counts.
    t0 = time.time()
    assert wait_until(quality_after(t0), timeout=120)
    assert metric_value(metrics(), "sandbox_data_quality_ok") == 1
    assert metric_value(metrics(), "sandbox_data_quality_failed", check="scale_shift", feature="income") == 0

    frame = generate_loans(2_000, seed=22)
    frame["income"] = (frame["income"] / 1_000).round(1)
    broken = records_of(frame, version)
    rejected = [
        {"ts": time.time(), "reason": "out_of_range", "field": "income", "row": {**broken[0]["features"], "income": -5}}
        for _ in range(300)
    ]  # fmt: skip
    ingest(monitor, broken, batch=5_000, rejected=rejected)
    t1 = time.time()
    assert wait_until(quality_after(t1), timeout=120)
    text = metrics()
    assert metric_value(text, "sandbox_data_quality_ok") == 0
    assert metric_value(text, "sandbox_data_quality_failed", check="scale_shift", feature="income") == 1
    assert metric_value(text, "sandbox_data_quality_failed", check="rejected_share", feature="") == 1
    assert metric_value(text, "sandbox_data_quality_failed", check="scale_shift", feature="age") == 0
    assert metric_value(text, "sandbox_data_quality_rejected_share") == pytest.approx(300 / 2_300)
    assert metric_value(text, "sandbox_monitor_rejected_rows_total") >= 300

    status = httpx.get(f"{monitor}/api/status", timeout=10).json()
    quality = status["quality"]
    assert set(quality) == {"ok", "evaluated_at", "rows", "model_version", "rejected_share", "failed"}
    assert (quality["ok"], quality["rows"], quality["model_version"]) == (False, 2_000, version)
    by_check = {f["check"]: f for f in quality["failed"]}
    assert set(by_check) == {"scale_shift", "rejected_share"}
    scale = by_check["scale_shift"]
    assert set(scale) == {"check", "feature", "value", "reference", "threshold", "message"}
    assert scale["feature"] == "income" and scale["value"] < 100 and scale["reference"] > 10_000
    assert "in the reference, x0.001" in scale["message"]
    assert by_check["rejected_share"]["feature"] is None
    assert status["rejected"]["rows"] == 300 and status["rejected"]["by_reason"] == {"out_of_range": 300}
    sample = status["rejected"]["sample"]
    assert len(sample) == 10 and sample[0]["field"] == "income" and sample[0]["value"] == -5
    page = httpx.get(f"{monitor}/", timeout=10).text
    assert "FAILED" in page and "What the client actually sends" in page and "x0.001" in page

    # The clean rule: what retraining reads has the clean window and nothing of the broken one.
    exported = {r["request_id"] for r in fetch_records(monitor, 50_000, labelled=False)}
    assert {r["request_id"] for r in clean} <= exported
    assert not exported & {r["request_id"] for r in broken}
    everything = httpx.get(f"{monitor}/api/records", params={"limit": 50_000}, timeout=30).json()["records"]
    assert {r["request_id"] for r in broken} <= {r["request_id"] for r in everything}


def test_labels_the_champion_ranks_backwards_fail_data_quality_until_the_join_is_fixed(monitor, version):
    """label_bug as it reaches the monitor: clean features, the labels of region north inverted. The
    quality verdict fails on that slice (a broken label join, not a changed world), and passes once
    the right labels replace them; the rows judged meanwhile never reach the retrainer's data."""
    from pipelines.production import fetch_records
    from pipelines.scenarios import LABEL_BUG

    column, value = LABEL_BUG
    frame = generate_loans(2_000, seed=31)
    records = records_of(frame, version, flip_every=5)  # a fair model: its probability ranks the labels well
    ingest(monitor, records, batch=5_000)
    north = set(frame.index[frame[column] == value])
    assert len(north) >= 200  # the check judges a region from 200 labelled rows

    def post_labels(inverted: bool) -> float:
        labels = [
            {
                "request_id": r["request_id"],
                "label": 1 - r["label"] if inverted and i in north else r["label"],
            }
            for i, r in enumerate(records)
        ]
        assert httpx.post(f"{monitor}/labels", json={"labels": labels}, timeout=30).status_code == 200
        return time.time()

    def verdict_after(t0: float):
        quality = httpx.get(f"{monitor}/api/status", timeout=10).json()["quality"]
        return quality if quality["evaluated_at"] and quality["evaluated_at"] > t0 else None

    t0 = post_labels(inverted=True)
    assert wait_until(lambda: verdict_after(t0), timeout=120)
    quality = verdict_after(t0)
    by_check = {f["check"]: f for f in quality["failed"]}
    assert quality["ok"] is False and set(by_check) == {"inverted_labels"}, quality["failed"]
    failure = by_check["inverted_labels"]
    assert failure["feature"] == column and f"{column}={value}" in failure["message"]
    assert failure["value"] < 0.35 and "label source" in failure["message"]
    text = httpx.get(f"{monitor}/metrics", timeout=10).text
    assert metric_value(text, "sandbox_data_quality_ok") == 0
    assert metric_value(text, "sandbox_data_quality_failed", check="inverted_labels", feature=column) == 1

    t1 = post_labels(inverted=False)  # the join fixed: the same requests, their right labels
    assert wait_until(lambda: (verdict_after(t1) or {}).get("ok") is True, timeout=120)
    text = httpx.get(f"{monitor}/metrics", timeout=10).text
    assert metric_value(text, "sandbox_data_quality_failed", check="inverted_labels", feature=column) == 0
    exported = {r["request_id"] for r in fetch_records(monitor, 50_000, labelled=True)}
    assert not exported & {r["request_id"] for r in records}  # judged broken once: never training data


def test_monitor_config_takes_its_defaults_from_the_settings():
    """One source of defaults: a MonitorConfig field that is also a setting defaults to the setting."""
    shared = [f for f in dataclasses.fields(MonitorConfig) if f"monitor_{f.name}" in Settings.model_fields]
    assert len(shared) == 8
    defaults = MonitorConfig()
    for f in shared:
        assert getattr(defaults, f.name) == Settings.model_fields[f"monitor_{f.name}"].default, f.name
    overridden = MonitorConfig.from_settings(Settings(monitor_min_rows=123, monitor_interval_seconds=2))
    assert (overridden.min_rows, overridden.interval_seconds) == (123, 2)


def test_the_app_judges_with_the_reference_loader_it_is_given(tmp_path):
    """In process, no MLflow: the factory's collaborator gives the reference, the loop judges against it."""
    from fastapi.testclient import TestClient

    asked = []

    def reference_loader(tracking_uri, model_name, version):
        asked.append(version)
        return generate_loans(2_000, seed=0)

    settings = Settings(
        home=tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}", alertmanager_port=free_port()
    )
    config = MonitorConfig(interval_seconds=0.2, min_rows=500, window_rows=1_000)
    app = create_app(settings, config, reference_loader=reference_loader)
    frame = generate_loans(600, seed=31)
    for scenario in ("covariate_shift", "new_category"):
        frame = apply_scenario(frame, scenario, 1.5, seed=31)
    sent = [{k: v for k, v in r.items() if k != "label"} for r in records_of(frame, "7")]
    with TestClient(app) as client:
        assert client.post("/ingest", json={"records": sent}).json() == {
            "inserted": 600,
            "duplicates": 0,
            "rejected": 0,
        }

        def judged():
            return (client.get("/api/status").json()["drift"] or {}).get("verdict") == "drift"

        assert wait_until(judged, timeout=60, interval=0.2), client.get("/api/status").json()
        assert set(asked) == {"7"}
        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert metric_value(metrics.text, "sandbox_feature_drifted", feature="region") == 1
        report = client.get("/reports/latest")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        page = client.get("/")
        assert (
            page.headers["content-type"].startswith("text/html")
            and '<span class="verdict">DRIFT</span>' in page.text
        )
