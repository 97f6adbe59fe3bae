"""A real `bentoml serve` of the champion from a real MLflow server."""

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from pipelines.data import generate_loans
from pipelines.features import LOAN_SCHEMA
from pipelines.scenarios import apply_scenario
from pipelines.train import features_only
from sandbox.local_stack import venv_bin
from sandbox.settings import Settings
from services.serving.feed import MonitorFeed, ServedBatch
from services.serving.model_store import example_rows
from services.serving.outbox import Outbox
from services.serving.rows import EXAMPLE_ROW, LoanRow, columns_of, model_frame
from tests.integration.serving_helpers import (
    MonitorStandIn,
    every_worker_serves,
    metric_value,
    register,
    register_broken,
    register_unrecognised,
)
from tests.support.processes import dead_pid, free_port, wait_until
from tests.support.servers import served

pytestmark = pytest.mark.integration
MODEL = "serving-it"


@pytest.fixture(scope="module")
def monitor():
    stand_in = MonitorStandIn(free_port())
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="module")
def serving(mlflow_server, monitor, tmp_path_factory):
    env = {
        "SANDBOX_MLFLOW_TRACKING_URI": mlflow_server,
        "SANDBOX_MODEL_NAME": MODEL,
        "SANDBOX_SERVING_POLL_SECONDS": "1",
        "SANDBOX_MONITOR_PORT": str(monitor.port),
        "SANDBOX_FEED_FLUSH_SECONDS": "0.2",
        "SANDBOX_FEED_TIMEOUT_SECONDS": "0.5",
    }
    with served(env, tmp_path_factory.mktemp("serving")) as url:
        yield url


def post(url, payload, **kwargs):
    return httpx.post(f"{url}/predict", json=payload, timeout=30, **kwargs)


def rows_of(frame: pd.DataFrame) -> list[dict]:
    return example_rows(frame[LOAN_SCHEMA.names])


def test_not_ready_until_a_champion_exists(serving):
    assert httpx.get(f"{serving}/readyz").status_code == 503
    response = post(serving, {"rows": [EXAMPLE_ROW]})
    assert response.status_code == 503
    assert "sandbox train" in response.json()["error"]
    assert httpx.get(f"{serving}/model").status_code == 503


@pytest.fixture(scope="module")
def v1(serving, mlflow_server):
    version = register(mlflow_server, MODEL, seed=1)
    assert wait_until(lambda: httpx.get(f"{serving}/readyz").status_code == 200, timeout=60)
    return version


def test_predictions_match_the_registered_model(serving, v1, mlflow_server):
    """Served by the NumPy path: the registered pipeline's answers, nulls and unseen categories included."""
    frame = apply_scenario(generate_loans(60, seed=9), "missing_values", 1.0)
    frame = apply_scenario(frame, "new_category", 3.0, seed=9)
    frame.loc[frame.index[::7], ["home_ownership", "purpose"]] = None
    assert httpx.get(f"{serving}/model").json()["inference"] == "numpy"
    answer = post(serving, {"rows": rows_of(frame)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.sklearn.load_model(f"models:/{MODEL}/{v1}")
    expected = model.predict_proba(features_only(frame, LOAN_SCHEMA))[:, 1]
    np.testing.assert_allclose([r["probability"] for r in body], expected, atol=1e-5)
    assert [r["prediction"] for r in body] == [int(p >= 0.5) for p in expected]
    assert {r["model_version"] for r in body} == {v1} and {r["model"] for r in body} == {MODEL}
    assert len({r["request_id"] for r in body}) == len(frame)


def test_model_endpoint_names_the_champion_and_its_example_is_accepted(serving, v1, mlflow_server):
    info = httpx.get(f"{serving}/model").json()
    assert info["name"] == MODEL and info["version"] == v1 and info["alias"] == "champion"
    assert info["run_id"] == mlflow.tracking.MlflowClient(mlflow_server).get_model_version(MODEL, v1).run_id
    assert info["loaded_at"] <= time.time()
    assert info["inference"] == "numpy", info["inference_reason"]
    assert "reference sample and input example" in info["inference_reason"]
    response = post(serving, {"rows": info["input_example"]})
    assert response.status_code == 200 and len(response.json()) == len(info["input_example"])


def test_unseen_category_is_served(serving, v1):
    response = post(serving, {"rows": [{**EXAMPLE_ROW, "region": "overseas"}]})
    assert response.status_code == 200


BAD_INPUTS = [
    ("empty list", {"rows": []}, 400, "rows", "at least 1 item"),
    ("too many rows", {"rows": [EXAMPLE_ROW] * 1001}, 400, "rows", "at most 1000"),
    ("rows not a list", {"rows": "x"}, 400, "rows", "valid array"),
    ("no rows field", {}, 400, "rows", "Field required"),
    ("row is null", {"rows": [None]}, 400, "rows.0", "object"),
    ("wrong type", {"rows": [{**EXAMPLE_ROW, "age": "old"}]}, 400, "rows.0.age", "valid integer"),
    ("missing field", {"rows": [{k: v for k, v in EXAMPLE_ROW.items() if k != "income"}]}, 400, "rows.0.income", "Field required"),
    ("out of range", {"rows": [{**EXAMPLE_ROW, "credit_score": 900}]}, 400, "rows.0.credit_score", "less than or equal to 850"),
    ("unknown field", {"rows": [{**EXAMPLE_ROW, "salary": 1}]}, 400, "rows.0.salary", "Extra inputs"),
    ("empty category", {"rows": [{**EXAMPLE_ROW, "region": ""}]}, 400, "rows.0.region", "at least 1 character"),
    ("infinite number", {"rows": [{**EXAMPLE_ROW, "income": "Infinity"}]}, 400, "rows.0.income", "finite"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "payload", "status", "field", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_a_4xx_naming_the_problem(serving, v1, case, payload, status, field, message):
    response = post(serving, payload)
    assert response.status_code == status, response.text
    details = response.json()["detail"]
    assert any(".".join(map(str, d["loc"])) == field and message in d["msg"] for d in details), details


def test_invalid_json_and_oversized_bodies(serving, v1):
    broken = httpx.post(
        f"{serving}/predict", content=b'{"rows": [', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and "Invalid JSON" in broken.json()["detail"][0]["msg"]
    big = b'{"rows": [' + b" " * (1_100_000) + b"]}"
    declared = httpx.post(f"{serving}/predict", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "exceeds 1048576 bytes" in declared.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced on the stream
        for _ in range(12):
            yield b" " * 100_000

    streamed = httpx.post(
        f"{serving}/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


@pytest.mark.parametrize(
    "content_type", ["multipart/form-data", "text/plain", "application/x-www-form-urlencoded"]
)
def test_non_json_bodies_are_415(serving, v1, content_type):
    response = httpx.post(
        f"{serving}/predict",
        content=json.dumps({"rows": [EXAMPLE_ROW]}),
        headers={"content-type": content_type},
    )
    assert response.status_code == 415 and "application/json" in response.json()["error"]


def test_feed_delivers_every_served_row_to_the_monitor(serving, v1, monitor):
    monitor.mode = "ok"
    body = post(serving, {"rows": rows_of(generate_loans(25, seed=3))}).json()
    ids = {r["request_id"] for r in body}
    assert wait_until(lambda: ids <= {r["request_id"] for r in monitor.records}, timeout=20)
    record = next(r for r in monitor.records if r["request_id"] in ids)
    assert set(record) == {"request_id", "ts", "model_version", "features", "prediction", "probability"}
    assert record["model_version"] == v1 and set(record["features"]) == set(LOAN_SCHEMA.names)
    assert abs(record["ts"] - time.time()) < 60


REFUSALS = [
    # (what the client sends, the counter it moves: ("rows", field, reason) or ("requests", reason))
    ({"rows": [{**EXAMPLE_ROW, "credit_score": 900}]}, ("rows", "credit_score", "out_of_range")),
    ({"rows": [{**EXAMPLE_ROW, "age": "old"}, EXAMPLE_ROW]}, ("rows", "age", "wrong_type")),
    ({"rows": [{k: v for k, v in EXAMPLE_ROW.items() if k != "income"}]}, ("rows", "income", "missing")),
    ({"rows": [{**EXAMPLE_ROW, "region": ""}]}, ("rows", "region", "unknown_category")),
    ({"rows": [EXAMPLE_ROW] * 1001}, ("requests", "too_many_rows")),
    (b'{"rows": [', ("requests", "invalid_json")),
    (b'{"rows": [' + b" " * 1_100_000 + b"]}", ("requests", "body_too_large")),
    ({"rows": []}, ("requests", "other")),
]  # fmt: skip


def test_every_refusal_is_counted_by_reason_and_sampled_to_the_monitor(serving, v1, monitor):
    monitor.mode = "ok"
    before = httpx.get(f"{serving}/metrics").text
    sampled_before = len(monitor.rejected)
    for payload, _ in REFUSALS:
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        response = httpx.post(
            f"{serving}/predict", content=content, headers={"content-type": "application/json"}
        )
        assert 400 <= response.status_code < 500, response.text
    after = httpx.get(f"{serving}/metrics").text
    for _, counter in REFUSALS:
        if counter[0] == "rows":
            name, labels = "sandbox_rows_rejected_total", {"field": counter[1], "reason": counter[2]}
        else:
            name, labels = "sandbox_requests_rejected_total", {"reason": counter[1]}
        assert metric_value(after, name, **labels) - metric_value(before, name, **labels) == 1, (name, labels)
    # The valid row refused with the bad one is neither counted nor stored as a record.
    assert (
        metric_value(after, "sandbox_rows_rejected_total")
        - metric_value(before, "sandbox_rows_rejected_total")
        == 4
    )

    def sampled():
        return (
            monitor.rejected[sampled_before:]
            if len(monitor.rejected) - sampled_before >= len(REFUSALS)
            else None
        )

    assert wait_until(sampled, timeout=20), monitor.rejected[sampled_before:]
    items = sampled()
    assert {(i["reason"], i["field"]) for i in items} == {
        ("out_of_range", "credit_score"), ("wrong_type", "age"), ("missing", "income"),
        ("unknown_category", "region"), ("too_many_rows", None), ("invalid_json", None),
        ("body_too_large", None), ("other", None),
    }  # fmt: skip
    out_of_range = next(i for i in items if i["reason"] == "out_of_range")
    assert out_of_range["row"]["credit_score"] == 900 and abs(out_of_range["ts"] - time.time()) < 60
    assert set(out_of_range) == {"ts", "reason", "field", "row"}
    assert not any(r["features"].get("credit_score") == 900 for r in monitor.records)
    assert wait_until(
        lambda: (
            metric_value(
                httpx.get(f"{serving}/metrics").text, "sandbox_monitor_feed_rejected_total", outcome="sent"
            )
            >= len(REFUSALS)
        ),
        timeout=10,
    )


def test_a_flood_of_refusals_does_not_slow_valid_requests(serving, v1, monitor):
    monitor.mode = "ok"
    stop = threading.Event()
    bad = json.dumps({"rows": [{**EXAMPLE_ROW, "credit_score": 900}] * 200}).encode()

    def flood():
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                http.post(f"{serving}/predict", content=bad, headers={"content-type": "application/json"})

    threads = [threading.Thread(target=flood) for _ in range(2)]
    for thread in threads:
        thread.start()
    latencies = []
    try:
        for _ in range(30):
            started = time.perf_counter()
            assert post(serving, {"rows": [EXAMPLE_ROW]}).status_code == 200
            latencies.append(time.perf_counter() - started)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert sorted(latencies)[len(latencies) // 2] < 0.5, latencies
    metrics = httpx.get(f"{serving}/metrics").text
    assert metric_value(metrics, "sandbox_rows_rejected_total", field="credit_score") > 200


def test_the_model_frame_is_what_training_gives():
    """predict builds its DataFrame from columns; the model must see what features_only gives it."""
    frame = apply_scenario(generate_loans(40, seed=4), "missing_values", 1.0)
    rows = [LoanRow.model_validate(row) for row in rows_of(frame)]
    pd.testing.assert_frame_equal(
        model_frame(columns_of(rows, LOAN_SCHEMA), LOAN_SCHEMA),
        features_only(pd.DataFrame([row.model_dump() for row in rows]), LOAN_SCHEMA),
    )


def served_batch(n: int, first: int = 0) -> ServedBatch:
    rows = [LoanRow.model_validate(row) for row in rows_of(generate_loans(n, seed=5))]
    return ServedBatch(
        time.time(), "7", [f"id-{first + i}" for i in range(n)], columns_of(rows, LOAN_SCHEMA),
        [i % 2 for i in range(n)], [0.25] * n,
    )  # fmt: skip


def counter() -> tuple[dict[str, int], Callable[[str, int], None]]:
    """A feed's ``count`` callback and the totals it keeps, by outcome."""
    counts: dict[str, int] = {}

    def count(outcome: str, n: int) -> None:
        counts[outcome] = counts.get(outcome, 0) + n

    return counts, count


def test_feed_queues_batches_counts_records_and_posts_at_most_batch_size():
    stand_in = MonitorStandIn(free_port())
    counts, count = counter()

    feed = MonitorFeed(
        f"http://127.0.0.1:{stand_in.port}", queue_size=100, batch_size=30, flush_seconds=0.1, count=count
    )
    try:
        feed.submit(served_batch(60))
        feed.submit(served_batch(50, first=60))  # 110 > 100 records: this batch is dropped whole, counted
        assert counts == {"dropped_queue_full": 50} and feed.queued == 60
        feed.start()
        assert wait_until(lambda: counts.get("sent") == 60, timeout=20), counts
        assert feed.queued == 0 and stand_in.posts == [30, 30]  # a 60-row batch went as 2 POSTs of 30
        assert [r["request_id"] for r in stand_in.records] == [f"id-{i}" for i in range(60)]
        record = stand_in.records[1]
        assert record["model_version"] == "7" and record["prediction"] == 1 and record["probability"] == 0.25
        assert set(record["features"]) == set(LOAN_SCHEMA.names)
    finally:
        feed.stop()
        stand_in.stop()


def test_records_wait_while_the_monitor_fails_spill_to_disk_and_all_arrive_once_it_is_back(tmp_path):
    stand_in = MonitorStandIn(free_port())
    stand_in.mode = "fail"
    counts, count = counter()

    outbox = Outbox(memory_bytes=20_000, directory=tmp_path, disk_bytes=10_000_000)  # ~2 bodies in memory
    feed = MonitorFeed(
        f"http://127.0.0.1:{stand_in.port}", batch_size=20, flush_seconds=0.05, count=count, outbox=outbox
    )
    feed.start()
    try:
        for i in range(6):
            feed.submit(served_batch(20, first=20 * i))
        assert wait_until(lambda: outbox.records == 120 and counts.get("retried", 0) > 0, timeout=20), counts
        assert counts["spooled"] >= 60 and list((tmp_path / str(os.getpid())).glob("*.json"))
        stand_in.mode = "ok"
        assert wait_until(lambda: counts.get("sent") == 120, timeout=30), counts
        assert [r["request_id"] for r in stand_in.records] == [
            f"id-{i}" for i in range(120)
        ]  # in order, once
        assert "dropped_undeliverable" not in counts and "dropped_queue_full" not in counts
        assert outbox.records == 0 and not list((tmp_path / str(os.getpid())).iterdir())
    finally:
        feed.stop()
        stand_in.stop()


def test_what_a_stopped_feed_could_not_deliver_goes_out_with_the_next_process(tmp_path):
    stand_in = MonitorStandIn(free_port())
    stand_in.mode = "fail"
    first = MonitorFeed(
        f"http://127.0.0.1:{stand_in.port}", batch_size=20, flush_seconds=0.05,
        outbox=Outbox(memory_bytes=1_000_000, directory=tmp_path, disk_bytes=10_000_000),
    )  # fmt: skip
    first.start()
    try:
        first.submit(served_batch(40))
        assert wait_until(lambda: first.outbox.records == 40 and first.queued == 0, timeout=20)
        first.stop(timeout=1)  # the monitor still fails: the bodies go from memory to the spool
        (tmp_path / str(os.getpid())).rename(tmp_path / str(dead_pid()))  # as if another process spooled
        stand_in.mode = "ok"
        counts, count = counter()
        outbox = Outbox(memory_bytes=1_000_000, directory=tmp_path, disk_bytes=10_000_000)
        assert outbox.records == 40
        second = MonitorFeed(
            f"http://127.0.0.1:{stand_in.port}", flush_seconds=0.05, outbox=outbox, count=count
        )
        second.start()
        assert wait_until(lambda: counts.get("sent") == 40, timeout=20), counts
        second.stop()
        assert sorted(r["request_id"] for r in stand_in.records) == sorted(f"id-{i}" for i in range(40))
    finally:
        first.stop(timeout=0)
        stand_in.stop()


@pytest.mark.parametrize("mode", ["slow", "fail", "down"])
def test_predictions_do_not_depend_on_the_monitor(serving, v1, monitor, mode):
    before = httpx.get(f"{serving}/metrics").text
    if mode == "down":
        monitor.server.socket.close()  # connection refused from now on
    monitor.mode = mode
    latencies = []
    for _ in range(20):
        started = time.perf_counter()
        assert post(serving, {"rows": [EXAMPLE_ROW]}).status_code == 200
        latencies.append(time.perf_counter() - started)
    # A slow monitor answers after 3 s; a prediction that waited for it would show it.
    assert sorted(latencies)[len(latencies) // 2] < 1.0

    def retried():
        after = httpx.get(f"{serving}/metrics").text
        name = "sandbox_monitor_feed_records_total"
        return metric_value(after, name, outcome="retried") > metric_value(before, name, outcome="retried")

    assert wait_until(retried, timeout=30), "records the monitor did not take must be retried"
    after = httpx.get(f"{serving}/metrics").text
    for outcome in ("dropped_undeliverable", "dropped_queue_full"):  # they wait: nothing is dropped
        name = "sandbox_monitor_feed_records_total"
        assert metric_value(after, name, outcome=outcome) == metric_value(before, name, outcome=outcome)


def test_swap_under_load_has_zero_failures_and_never_serves_a_broken_version(serving, v1, mlflow_server):
    outcomes: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def client():
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                response = http.post(f"{serving}/predict", json={"rows": [EXAMPLE_ROW]})
                version = response.json()[0]["model_version"] if response.status_code == 200 else None
                outcomes.append((response.status_code, version))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        v2 = register(mlflow_server, MODEL, seed=2, max_iter=50)
        assert wait_until(lambda: any(v == v2 for _, v in outcomes[-20:]), timeout=60), "v2 never served"
        served_v2_from = len(outcomes)
        broken = register_broken(mlflow_server, MODEL)
        time.sleep(8)  # several polls of the alias while under load
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)

    assert outcomes and all(status == 200 for status, _ in outcomes), [o for o in outcomes if o[0] != 200][:5]
    versions = [v for _, v in outcomes]
    assert set(versions) == {v1, v2}, "the broken version must never be served"
    # Each worker swaps on its own poll; once both have, every answer comes from v2.
    assert versions[served_v2_from:] and set(versions[-20:]) == {v2}
    assert httpx.get(f"{serving}/model").json()["version"] == v2
    metrics = httpx.get(f"{serving}/metrics").text
    assert metric_value(metrics, "sandbox_model_load_failures_total", model=MODEL) >= 1
    assert metric_value(metrics, "sandbox_model_info", model=MODEL, version=v2) == 1
    assert metric_value(metrics, "sandbox_model_info", model=MODEL, version=v1) == 0
    # How many workers serve each version (livesum): all of them v2 once each has polled.
    workers = Settings().serving_workers

    def workers_on(version: str) -> float:
        return metric_value(
            httpx.get(f"{serving}/metrics").text, "sandbox_model_workers", model=MODEL, version=version
        )

    assert wait_until(lambda: workers_on(v2) == workers, timeout=30), workers_on(v2)
    assert workers_on(v1) == 0
    assert broken not in versions
    # What HighPredictionLatency reads (BentoML's own histogram, per endpoint).
    assert 'bentoml_service_request_duration_seconds_bucket{endpoint="/predict"' in metrics


def test_a_model_the_numpy_path_does_not_know_is_served_by_its_pipeline(serving, v1, mlflow_server):
    version = register_unrecognised(mlflow_server, MODEL)
    assert wait_until(lambda: every_worker_serves(serving, version), timeout=60)
    info = httpx.get(f"{serving}/model").json()
    assert info["inference"] == "sklearn" and "StandardScaler" in info["inference_reason"], info
    frame = apply_scenario(generate_loans(40, seed=10), "missing_values", 1.0)
    answer = post(serving, {"rows": rows_of(frame)})
    assert answer.status_code == 200 and {r["model_version"] for r in answer.json()} == {version}
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.sklearn.load_model(f"models:/{MODEL}/{version}")
    expected = model.predict_proba(features_only(frame, LOAN_SCHEMA))[:, 1]
    np.testing.assert_allclose([r["probability"] for r in answer.json()], expected, atol=1e-5)


def test_openapi_fuzzing_finds_no_server_error(serving, v1, tmp_path):
    """schemathesis against BentoML's OpenAPI for /predict: no 5xx, responses match the documented schema."""
    result = subprocess.run(
        [
            venv_bin("st"), "run", f"{serving}/docs.json",
            "--include-path", "/predict",
            "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
            "--max-examples", "60", "--max-time", "90", "--request-timeout", "30",
            "--suppress-health-check", "all",
        ],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:]
    generated = re.search(r"(\d+) generated", result.stdout)
    assert generated and int(generated[1]) > 100, result.stdout[-2000:]
    print(f"schemathesis: {generated[1]} cases, no failure")
