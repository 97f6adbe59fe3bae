import pytest

from tests.support.servers import running_mlflow


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite + proxied artifacts) on a free port."""
    with running_mlflow(tmp_path_factory.mktemp("mlflow")) as url:
        yield url
