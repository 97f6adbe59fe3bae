"""Fixtures of the offline cluster checks (helpers in helpers.py)."""

import pytest

from tests.manifests.helpers import BASE, KIND_OVERLAY, render


@pytest.fixture(scope="session")
def kind_objects() -> list[dict]:
    return render(KIND_OVERLAY)


@pytest.fixture(scope="session")
def base_objects() -> list[dict]:
    return render(BASE)
