import pytest

import pipelines  # noqa: F401  before any test module loads scikit-learn: its OpenMP threads then sleep
from tests.support.servers import running_mlflow


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite + proxied artifacts) on a free port."""
    with running_mlflow(tmp_path_factory.mktemp("mlflow")) as url:
        yield url
