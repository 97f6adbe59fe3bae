"""The record store's shadow columns: stored, filtered, and added to a store an older monitor made."""

import sqlite3

import pytest
from pydantic import ValidationError

from services.monitor.app import Record
from services.monitor.store import RecordStore

# The records table as the monitor created it before shadow scoring existed.
OLD_SCHEMA = """
CREATE TABLE records (
    request_id TEXT PRIMARY KEY, ts REAL NOT NULL, model_version TEXT NOT NULL, features TEXT NOT NULL,
    prediction INTEGER NOT NULL, probability REAL NOT NULL, label INTEGER NULL, received_at REAL NOT NULL
);
INSERT INTO records VALUES ('old', 1.0, '1', '{"age": 40}', 0, 0.2, 1, 5.0);
"""


def record(request_id: str, version: str = "1", shadow: str | None = None, ts: float = 10.0) -> dict:
    out = {"request_id": request_id, "ts": ts, "model_version": version, "features": {"age": 30},
           "prediction": 1, "probability": 0.7}  # fmt: skip
    if shadow:
        out.update(shadow_version=shadow, shadow_prediction=0, shadow_probability=0.25)
    return out


def test_an_existing_store_gains_the_shadow_columns_and_keeps_its_records(tmp_path):
    path = tmp_path / "monitor.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    store = RecordStore(path)
    store.insert_records([record("new", shadow="2")], received_at=6.0)
    old, new = store.export(10)
    assert old["request_id"] == "old" and old["label"] == 1 and old["features"] == {"age": 40}
    assert (old["shadow_version"], old["shadow_prediction"], old["shadow_probability"]) == (None, None, None)
    assert (new["shadow_version"], new["shadow_prediction"], new["shadow_probability"]) == ("2", 0, 0.25)
    store.close()
    RecordStore(path).close()  # opening a migrated store again changes nothing


def test_records_filter_by_answering_version_shadow_version_labels_and_arrival(tmp_path):
    store = RecordStore(tmp_path / "m.db")
    store.insert_records([record("a", shadow="2"), record("b", shadow="2"), record("c")], received_at=100.0)
    store.insert_records([record("d", version="2"), record("e", version="2")], received_at=200.0)
    store.set_labels([{"request_id": i, "label": 1} for i in ("a", "c", "d")])

    def ids(**filters):
        return [r["request_id"] for r in store.export(10, **filters)]

    assert ids(shadow_version="2") == ["a", "b"]
    assert ids(labelled_only=True, shadow_version="2") == ["a"]
    assert ids(labelled_only=True, model_version="2", since=150) == ["d"]
    assert ids(model_version="2", since=250) == []
    assert ids(model_version="1") == ["a", "b", "c"]
    assert store.export(10, shadow_version="3") == []
    store.close()


@pytest.mark.parametrize(
    "fields",
    [{"shadow_version": "2"}, {"shadow_version": "2", "shadow_prediction": 1}, {"shadow_probability": 0.3}],
)
def test_a_record_with_part_of_the_shadow_fields_is_refused(fields):
    with pytest.raises(ValidationError, match="needs all of shadow_version"):
        Record.model_validate({**record("x"), **fields})


def test_a_record_with_a_bad_shadow_answer_is_refused():
    with pytest.raises(ValidationError):
        Record.model_validate({**record("x", shadow="2"), "shadow_probability": 1.5})
    with pytest.raises(ValidationError):
        Record.model_validate({**record("x", shadow="2"), "shadow_prediction": True})
    assert Record.model_validate(record("x", shadow="2")).shadow_version == "2"
