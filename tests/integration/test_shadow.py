"""Shadow scoring end to end: real MLflow, a real `bentoml serve`, a real monitor.

The challenger scores served rows in shadow; clients only ever get the champion's answer, the monitor
stores the challenger's with each record, and serving follows the `challenger` alias as it moves.
"""

import threading
import time

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines.data import generate_loans
from pipelines.features import LOAN_SCHEMA
from pipelines.registry import CHALLENGER
from pipelines.train import features_only
from services.serving.model_store import example_rows
from tests.integration.serving_helpers import metric_value, register, register_broken
from tests.integration.test_monitor import running_monitor
from tests.support.processes import wait_until
from tests.support.servers import served

pytestmark = pytest.mark.integration
MODEL = "shadow-it"
PROBE_ROWS = 40


@pytest.fixture(scope="module")
def monitor(mlflow_server, tmp_path_factory):
    with running_monitor(tmp_path_factory.mktemp("shadow-monitor"), mlflow_server, model=MODEL) as url:
        yield url


@pytest.fixture(scope="module")
def versions(mlflow_server):
    """v1 champion, v2 a different model (for the challenger); no `challenger` alias to start with."""
    v1 = register(mlflow_server, MODEL, seed=1)
    v2 = register(mlflow_server, MODEL, seed=2, champion=False, max_iter=30, learning_rate=0.3)
    # Until registration stops setting it (the release helper's change), it points at the newest version.
    client = MlflowClient(mlflow_server)
    if CHALLENGER in client.get_registered_model(MODEL).aliases:
        client.delete_registered_model_alias(MODEL, CHALLENGER)
    return v1, v2


@pytest.fixture(scope="module")
def serving(mlflow_server, monitor, versions, tmp_path_factory):
    env = {
        "SANDBOX_MLFLOW_TRACKING_URI": mlflow_server,
        "SANDBOX_MODEL_NAME": MODEL,
        "SANDBOX_SERVING_POLL_SECONDS": "1",
        "SANDBOX_MONITOR_PORT": monitor.rsplit(":", 1)[1],
        "SANDBOX_FEED_FLUSH_SECONDS": "0.2",
    }
    with served(env, tmp_path_factory.mktemp("shadow-serving")) as url:
        assert wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=60)
        yield url


class Load:
    """Clients posting single rows all along; every answer's status and version is kept."""

    def __init__(self, url: str, clients: int = 2):
        self.url, self.outcomes, self.stop = url, [], threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(i,)) for i in range(clients)]

    def client(self, seed: int) -> None:
        rows = example_rows(generate_loans(200, seed=100 + seed)[LOAN_SCHEMA.names])
        with httpx.Client(timeout=30) as http:
            i = 0
            while not self.stop.is_set():
                response = http.post(f"{self.url}/predict", json={"rows": [rows[i % len(rows)]]})
                self.outcomes.append((response.status_code, response.json()[0]["model_version"]
                                      if response.status_code == 200 else response.text))  # fmt: skip
                i += 1
                time.sleep(0.02)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def probe(serving: str, monitor: str, seed: int) -> tuple[pd.DataFrame, list[dict], list[dict]]:
    """Rows posted in 4 requests (fresh connections, so both workers answer), their answers, and their
    records once the monitor holds them all."""
    frame = generate_loans(PROBE_ROWS, seed=seed).reset_index(drop=True)
    rows, since = example_rows(frame[LOAN_SCHEMA.names]), time.time() - 1
    answers = []
    for start in range(0, PROBE_ROWS, PROBE_ROWS // 4):
        response = httpx.post(
            f"{serving}/predict", json={"rows": rows[start : start + PROBE_ROWS // 4]}, timeout=30
        )
        assert response.status_code == 200, response.text
        answers.extend(response.json())
    ids = [a["request_id"] for a in answers]
    found: dict[str, dict] = {}

    def stored():
        page = httpx.get(
            f"{monitor}/api/records", params={"since": since, "limit": 50_000}, timeout=30
        ).json()
        found.update({r["request_id"]: r for r in page["records"] if r["request_id"] in set(ids)})
        return len(found) == len(ids)

    assert wait_until(stored, timeout=30), f"{len(found)} of {len(ids)} records reached the monitor"
    return frame, answers, [found[i] for i in ids]


def shadow_versions(serving: str, monitor: str, seed: int) -> set:
    return {r["shadow_version"] for r in probe(serving, monitor, seed)[2]}


def settles(serving: str, monitor: str, expected: set, timeout: float = 30) -> float:
    """Seconds until a probe's records all carry ``expected`` shadow versions (each worker polls on its own)."""
    started, seed = time.monotonic(), [1000]

    def check():
        seed[0] += 1
        return shadow_versions(serving, monitor, seed[0]) == expected

    assert wait_until(check, timeout=timeout, interval=0.2), f"records never settled on shadow {expected}"
    return time.monotonic() - started


def test_the_challenger_scores_in_shadow_and_never_answers(serving, monitor, versions, mlflow_server):
    v1, v2 = versions
    client = MlflowClient(mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    models = {v: mlflow.sklearn.load_model(f"models:/{MODEL}/{v}") for v in (v1, v2)}
    broken = register_broken(mlflow_server, MODEL, alias=CHALLENGER)
    client.delete_registered_model_alias(MODEL, CHALLENGER)  # registration set it; the test sets it below
    with Load(serving) as load:
        assert shadow_versions(serving, monitor, seed=1) == {None}  # no alias: no shadow
        client.set_registered_model_alias(MODEL, CHALLENGER, v2)
        seconds = {"v2": settles(serving, monitor, {v2})}

        frame, answers, records = probe(serving, monitor, seed=2)
        features = features_only(frame, LOAN_SCHEMA)
        expected = {v: models[v].predict_proba(features)[:, 1] for v in (v1, v2)}
        assert {a["model_version"] for a in answers} == {v1}  # clients get the champion only
        np.testing.assert_allclose([a["probability"] for a in answers], expected[v1], atol=1e-5)
        assert {r["model_version"] for r in records} == {v1} and {r["shadow_version"] for r in records} == {
            v2
        }
        np.testing.assert_allclose([r["shadow_probability"] for r in records], expected[v2], atol=1e-6)
        assert [r["shadow_prediction"] for r in records] == [int(p >= 0.5) for p in expected[v2]]
        assert not np.allclose(expected[v1], expected[v2], atol=1e-3)  # two models, really compared

        # The release controller's query: labelled rows the challenger scored.
        labels = [{"request_id": r["request_id"], "label": i % 2} for i, r in enumerate(records)]
        assert (
            httpx.post(f"{monitor}/labels", json={"labels": labels}, timeout=30).json()["updated"]
            == PROBE_ROWS
        )
        page = httpx.get(
            f"{monitor}/api/records",
            params={"labelled": True, "shadow_version": v2, "limit": 50_000},
            timeout=30,
        ).json()
        paired = {r["request_id"]: r for r in page["records"]}
        assert {r["request_id"] for r in records} <= set(paired)
        assert all(r["label"] is not None and r["shadow_version"] == v2 for r in paired.values())
        assert set(paired[records[0]["request_id"]]["features"]) == set(LOAN_SCHEMA.names)
        model_info = httpx.get(f"{serving}/model").json()
        assert model_info["version"] == v1 and model_info["shadow_version"] == v2

        # A challenger that fails its smoke test is never loaded: no shadow, counted, champion unharmed.
        client.set_registered_model_alias(MODEL, CHALLENGER, broken)
        seconds["broken"] = settles(serving, monitor, {None})
        assert httpx.get(f"{serving}/model").json()["shadow_version"] is None
        # The alias moves back: followed within a poll; removed: the shadow ends; the champion's own: none.
        client.set_registered_model_alias(MODEL, CHALLENGER, v2)
        seconds["back to v2"] = settles(serving, monitor, {v2})
        client.delete_registered_model_alias(MODEL, CHALLENGER)
        seconds["removed"] = settles(serving, monitor, {None})
        client.set_registered_model_alias(MODEL, CHALLENGER, v1)
        time.sleep(3)  # several polls
        assert shadow_versions(serving, monitor, seed=3) == {None}
    print(f"shadow followed the alias in {seconds} s (poll 1 s)")

    assert load.outcomes and all(status == 200 for status, _ in load.outcomes), [
        o for o in load.outcomes if o[0] != 200
    ][:5]
    assert {version for _, version in load.outcomes} == {v1}
    metrics = httpx.get(f"{serving}/metrics").text
    assert metric_value(metrics, "sandbox_shadow_failures_total", model=MODEL) >= 1
    assert metric_value(metrics, "sandbox_shadow_predictions_total", model=MODEL, version=v2) >= PROBE_ROWS
    assert metric_value(metrics, "sandbox_shadow_predictions_total", model=MODEL, version=broken) == 0
    # Its time budget (5 % of a worker) is far from spent at this load: nothing went unshadowed.
    assert f'sandbox_shadow_skipped_rows_total{{model="{MODEL}"}} 0.0' in metrics
    assert metric_value(metrics, "sandbox_model_load_failures_total", model=MODEL) == 0  # the champion's
    stored = httpx.get(f"{monitor}/api/records", params={"shadow_version": broken, "limit": 10}, timeout=30)
    assert stored.json()["count"] == 0
