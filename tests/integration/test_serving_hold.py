"""A worker that has no model yet holds /predict until its next poll loads the champion.

The watcher polls rarely here (60 s), so only the request itself can make the worker look: a burst
of 503s right after the first promotion (one worker serving, the other not yet polled) was the
demo's only failed requests.
"""

import time

import httpx
import pytest

from services.serving.rows import EXAMPLE_ROW
from tests.integration.serving_helpers import register
from tests.support.servers import served

pytestmark = pytest.mark.integration
MODEL = "serving-hold-it"


@pytest.fixture(scope="module")
def serving(mlflow_server, tmp_path_factory):
    env = {
        "SANDBOX_MLFLOW_TRACKING_URI": mlflow_server,
        "SANDBOX_MODEL_NAME": MODEL,
        "SANDBOX_SERVING_POLL_SECONDS": "60",
        "SANDBOX_MONITOR_FEED": "false",
    }
    with served(env, tmp_path_factory.mktemp("serving-hold")) as url:
        yield url


def test_without_a_champion_the_503_comes_at_once_and_names_the_fix(serving):
    started = time.monotonic()
    response = httpx.post(f"{serving}/predict", json={"rows": [EXAMPLE_ROW]}, timeout=30)
    assert response.status_code == 503 and "sandbox train" in response.json()["error"]
    assert time.monotonic() - started < 10  # one poll of MLflow, not the whole hold


def test_a_request_after_the_first_promotion_is_held_and_answered(serving, mlflow_server):
    version = register(mlflow_server, MODEL, seed=2)
    # Both workers last polled before the promotion and would not look again for a minute.
    answers = [httpx.post(f"{serving}/predict", json={"rows": [EXAMPLE_ROW]}, timeout=30) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    assert {a.json()[0]["model_version"] for a in answers} == {version}
