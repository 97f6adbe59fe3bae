"""Helpers for the serving tests: register models in-process, a stand-in monitor, read /metrics.

(The served process itself is tests/support/servers.py: served().)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from pipelines.data import generate_loans, load_breast_cancer_frame
from pipelines.evaluate import evaluate_model
from pipelines.features import LOAN_SCHEMA, breast_cancer_schema
from pipelines.registry import log_and_register
from pipelines.train import build_model, features_only, split, train_model


def register(tracking_uri: str, name: str, seed: int = 0, champion: bool = True, **hyperparams) -> str:
    """Train on synthetic loans and register a version (the plain functions the pipeline wraps)."""
    from mlflow.tracking import MlflowClient

    train, holdout = split(generate_loans(3_000, seed=seed), LOAN_SCHEMA, seed=seed)
    model = train_model(train, LOAN_SCHEMA, **hyperparams)
    metrics = evaluate_model(model, holdout, LOAN_SCHEMA)
    _, version = log_and_register(
        tracking_uri, model, LOAN_SCHEMA, train, {"seed": seed}, metrics, name, "it"
    )
    if champion:
        MlflowClient(tracking_uri).set_registered_model_alias(name, "champion", version)
    return version


def register_broken(tracking_uri: str, name: str, alias: str = "champion") -> str:
    """A version that loads but cannot serve the loan schema (a breast-cancer model), given ``alias``."""
    from mlflow.tracking import MlflowClient

    frame = load_breast_cancer_frame()
    schema = breast_cancer_schema()
    model = train_model(frame, schema, max_iter=5)
    _, version = log_and_register(tracking_uri, model, schema, frame, {}, {}, name, "it")
    MlflowClient(tracking_uri).set_registered_model_alias(name, alias, version)
    return version


def register_unrecognised(tracking_uri: str, name: str) -> str:
    """A loan model the NumPy path does not compile (scaled numbers), made champion: the pipeline serves it."""
    from mlflow.tracking import MlflowClient
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, holdout = split(generate_loans(3_000, seed=3), LOAN_SCHEMA, seed=3)
    model = build_model(LOAN_SCHEMA, max_iter=20)
    preprocess = model.named_steps["preprocess"]
    label, imputer, columns = preprocess.transformers[0]
    preprocess.transformers[0] = (label, make_pipeline(imputer, StandardScaler()), columns)
    model.fit(features_only(train, LOAN_SCHEMA), train[LOAN_SCHEMA.label].astype(int))
    metrics = evaluate_model(model, holdout, LOAN_SCHEMA)
    _, version = log_and_register(tracking_uri, model, LOAN_SCHEMA, train, {}, metrics, name, "it")
    MlflowClient(tracking_uri).set_registered_model_alias(name, "champion", version)
    return version


class MonitorStandIn:
    """Records what serving POSTs to /ingest; can be told to be slow, to fail, or to be down.

    (The real monitor is a later stage; this tests the feed's behaviour against each failure mode.)
    """

    def __init__(self, port: int):
        self.port, self.records, self.mode = port, [], "ok"
        self.rejected: list[dict] = []  # the `rejected` items serving sampled
        self.posts: list[int] = []  # records per accepted POST
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if outer.mode == "slow":
                    time.sleep(3)
                if outer.mode == "fail":
                    self.send_response(503)
                    self.end_headers()
                    return
                payload = json.loads(body)
                records = payload["records"]
                outer.records.extend(records)
                outer.rejected.extend(payload.get("rejected", []))
                if records:
                    outer.posts.append(len(records))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def every_worker_serves(serving: str, version: str) -> bool:
    """Whether every serving worker has swapped to ``version``.

    ``/model`` answers from whichever worker takes the connection, and each worker swaps on its own
    poll; ``sandbox_model_info`` (livemax over the workers) is 0 for a version no worker serves.
    """
    metrics = httpx.get(f"{serving}/metrics").text
    served = metric_value(metrics, "sandbox_model_info")  # 1 a version some worker serves
    return served == 1 and metric_value(metrics, "sandbox_model_info", version=version) == 1


def metric_value(metrics_text: str, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
