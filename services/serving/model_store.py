"""The served model: load a registered version, smoke-test it, swap atomically when the alias moves.

We load the scikit-learn pipeline straight from the MLflow registry
(``mlflow.sklearn``) rather than importing it into the BentoML model store:
MLflow is the one source of truth for versions and aliases, a swap is a poll
of the alias (no copy of every version into a second store, no shared store
needed between pods), and the native object gives ``predict_proba`` without
pyfunc's per-call schema enforcement (our pydantic rows already validate).
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipelines.features import FeatureSchema
from pipelines.train import features_only

log = logging.getLogger("sandbox.serving")


class ModelLoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    run_id: str
    alias: str
    model: object
    input_example: list[dict]
    loaded_at: float = field(default_factory=time.time)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.model.predict_proba(frame)[:, 1]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "alias": self.alias,
            "loaded_at": self.loaded_at,
            "input_example": self.input_example,
        }


def example_rows(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready rows (NaN -> None, numpy scalars -> Python) that ``/predict`` accepts as they are."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in rows]


def smoke_test(model: object, example: pd.DataFrame, schema: FeatureSchema) -> None:
    """Predict on the version's own input example; a model that cannot is never served."""
    missing = [c for c in schema.names if c not in example.columns]
    if missing:
        raise ModelLoadError(f"input example lacks the serving schema's columns {missing}")
    prob = model.predict_proba(features_only(example, schema))[:, 1]
    if len(prob) != len(example) or not all(0 <= p <= 1 and not math.isnan(p) for p in prob):
        raise ModelLoadError("smoke prediction returned invalid probabilities")


def load_version(
    client, tracking_uri: str, name: str, version: str, alias: str, schema: FeatureSchema
) -> LoadedModel:
    """Download, load and smoke-test one registered version; raise ``ModelLoadError`` on any failure."""
    import mlflow
    from mlflow.models import Model

    try:
        model_version = client.get_model_version(name, version)
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=tmp, tracking_uri=tracking_uri
            )
            model = mlflow.sklearn.load_model(local)
            example = Model.load(local).load_input_example(local)
        if not isinstance(example, pd.DataFrame):
            raise ModelLoadError("the version has no tabular input example")
        smoke_test(model, example, schema)
    except ModelLoadError:
        raise
    except Exception as exc:  # any failure to fetch, unpickle or predict means: do not serve it
        raise ModelLoadError(f"{type(exc).__name__}: {exc}") from exc
    return LoadedModel(name, version, model_version.run_id, alias, model, example_rows(example[schema.names]))


class ModelHolder:
    """Holds the served model; a watcher thread follows the alias and swaps only to a healthy version."""

    def __init__(
        self,
        tracking_uri: str,
        name: str,
        schema: FeatureSchema,
        alias: str = "champion",
        on_swap: Callable[[LoadedModel | None, LoadedModel], None] = lambda old, new: None,
        on_failure: Callable[[str, str], None] = lambda version, reason: None,
        after_swap: Callable[[], None] = lambda: None,
    ):
        import mlflow
        from mlflow.tracking import MlflowClient

        # models:/ URIs resolve through the global registry URI (else MLflow falls back to ./mlflow.db).
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.tracking_uri, self.client = tracking_uri, MlflowClient(tracking_uri, registry_uri=tracking_uri)
        self.name, self.schema, self.alias = name, schema, alias
        self.current: LoadedModel | None = None  # replaced in one assignment: readers never see half a swap
        self.failed_versions: dict[str, str] = {}
        self.on_swap, self.on_failure, self.after_swap = on_swap, on_failure, after_swap
        self._stop = threading.Event()
        self._wake = threading.Event()  # a request without a model asks for a poll now
        self._thread: threading.Thread | None = None
        self.polls = 0  # completed polls (loaded, unchanged, no alias or failed)
        self.polling = False

    def alias_version(self) -> str | None:
        from pipelines.registry import alias_version

        found = alias_version(self.client, self.name, self.alias)
        return found.version if found else None

    def refresh(self) -> bool:
        """One poll: returns True when a new version was swapped in."""
        return self._follow(self.alias_version())

    def _follow(self, version: str | None) -> bool:
        """Load ``version`` unless it is served already or known bad; True when it was swapped in."""
        if version is None or (self.current and self.current.version == version):
            return False
        if version in self.failed_versions:
            return False  # known bad; wait for the alias to move again
        try:
            loaded = load_version(self.client, self.tracking_uri, self.name, version, self.alias, self.schema)
        except ModelLoadError as exc:
            self.failed_versions[version] = str(exc)
            log.error("not loading %s v%s (@%s): %s (keeping %s)", self.name, version, self.alias, exc,
                      self.describe_current())  # fmt: skip
            self.on_failure(version, str(exc))
            return False
        old, self.current = self.current, loaded
        log.info("now serving %s v%s (was %s)", self.name, version, old.version if old else "nothing")
        self.on_swap(old, loaded)
        return True

    def describe_current(self) -> str:
        return f"v{self.current.version}" if self.current else "no model"

    def poll(self) -> None:
        """One poll as the watcher makes it: never raises, always counted."""
        self.polling = True
        try:
            if self.refresh():
                self.after_swap()  # the old version is unreferenced by now
        except Exception as exc:  # MLflow down or slow: keep serving what we have, try again
            log.warning("could not check %s@%s: %s", self.name, self.alias, exc)
        finally:
            self.polling, self.polls = False, self.polls + 1

    def wake(self) -> None:
        self._wake.set()

    async def wait_for_model(self, bound: float) -> LoadedModel | None:
        """The model, waiting up to ``bound`` s for the next poll to load one; None if there is none.

        A worker that has not loaded the champion yet (another worker may already serve it, the
        alias just moved) holds the request instead of refusing it: it asks for a poll now and
        answers once that poll ends. A poll already under way may predate the alias: wait for the next.
        """
        import asyncio

        if self.current is not None:
            return self.current
        needed = self.polls + (2 if self.polling else 1)
        self.wake()
        deadline = time.monotonic() + bound
        while self.current is None and self.polls < needed and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.current

    def start(self, interval: float) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.poll()
                self._wake.wait(interval)
                self._wake.clear()

        self._thread = threading.Thread(target=loop, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


class ShadowHolder(ModelHolder):
    """Holds the ``challenger`` for shadow scoring: the same load, smoke test and swap as the champion's,
    but it holds the alias's version or nothing. Where the champion's holder keeps serving what it has,
    this one lets go when the alias is removed, points at the champion's own version (a shadow of the
    champion compares nothing), or moves to a version that does not load (the old one is no challenger)."""

    def __init__(self, *args, champion: Callable[[], str | None], **kwargs):
        super().__init__(*args, **kwargs)
        self.champion = champion  # the version the champion's holder serves now

    def refresh(self) -> bool:
        version = self.alias_version()
        wanted = None if version is None or version == self.champion() else version
        if wanted is not None and self._follow(wanted):
            return True
        if self.current is None or self.current.version == wanted:
            return False
        old, self.current = self.current, None
        why = (
            "no alias"
            if version is None
            else "the champion's version"
            if wanted is None
            else f"v{version} failed"
        )
        log.info("shadow of %s v%s ended (%s@%s: %s)", self.name, old.version, self.name, self.alias, why)
        return True  # the caller collects the released model
