"""The feed's outbox on a real temp directory: first in first out across memory and disk, bounded,
kept across a stop, and adopted from a process that is gone."""

from __future__ import annotations

import os

from services.serving.outbox import Outbox
from tests.support.processes import dead_pid


def drain(outbox: Outbox) -> list[bytes]:
    out = []
    while (body := outbox.head(timeout=0)) is not None:
        out.append(body.data)
        outbox.done(body)
    return out


def bodies(n: int, size: int = 100) -> list[bytes]:
    return [f"{i:04d}".encode() * (size // 4) for i in range(n)]


def test_bodies_past_the_memory_bound_wait_on_disk_and_come_back_in_order(tmp_path):
    outbox = Outbox(memory_bytes=250, directory=tmp_path, disk_bytes=10_000)
    sent = bodies(6)
    where = [outbox.put(data, records=10).path for data in sent]
    assert where[:2] == [None, None] and all(path is not None for path in where[2:])
    assert outbox.memory_used == 200 and outbox.disk_used == 400 and outbox.records == 60
    own = tmp_path / str(os.getpid())
    assert len(list(own.glob("*.json"))) == 4
    assert drain(outbox) == sent
    assert outbox.records == 0 and outbox.disk_used == 0 and not list(own.iterdir())


def test_once_a_body_waits_on_disk_the_next_ones_follow_it_there(tmp_path):
    outbox = Outbox(memory_bytes=250, directory=tmp_path, disk_bytes=10_000)
    first = bodies(3)
    for data in first:
        outbox.put(data, records=1)
    head = outbox.head(timeout=0)
    outbox.done(head)  # memory has room again, but an older body is on disk
    assert outbox.put(b"late" * 25, records=1).path is not None
    assert outbox.disk_used == 200
    assert drain(outbox) == first[1:] + [b"late" * 25]


def test_a_full_outbox_refuses_and_memory_only_loses_what_is_left_at_close(tmp_path):
    outbox = Outbox(memory_bytes=250, directory=tmp_path, disk_bytes=150)
    assert [outbox.put(data, records=5) is not None for data in bodies(4)] == [True, True, True, False]
    assert outbox.records == 15
    memory_only = Outbox(memory_bytes=250)
    assert [memory_only.put(data, records=5) is not None for data in bodies(3)] == [True, True, False]
    assert memory_only.close() == 10 and memory_only.records == 0


def test_close_writes_memory_to_disk_and_a_restart_of_the_same_process_finds_it_in_order(tmp_path):
    outbox = Outbox(memory_bytes=250, directory=tmp_path, disk_bytes=10_000)
    sent = bodies(5)
    for data in sent:
        outbox.put(data, records=3)
    assert outbox.close() == 0
    again = Outbox(memory_bytes=250, directory=tmp_path, disk_bytes=10_000)
    assert again.records == 15
    assert drain(again) == sent


def test_the_spool_of_a_gone_process_is_adopted_and_a_live_ones_is_not(tmp_path):
    gone, alive = tmp_path / str(dead_pid()), tmp_path / str(os.getppid())
    for directory, label in ((alive, b"live"), (gone, b"gone")):  # a writer adopts: the gone one last
        writer = Outbox(memory_bytes=0, directory=tmp_path, disk_bytes=10_000)
        writer.put(label * 25, records=7)
        (tmp_path / str(os.getpid())).rename(directory)
    adopter = Outbox(memory_bytes=0, directory=tmp_path, disk_bytes=10_000)
    assert adopter.records == 7 and not gone.exists() and len(list(alive.glob("*.json"))) == 1
    assert drain(adopter) == [b"gone" * 25]


def test_an_unwritable_spool_leaves_memory_only(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    outbox = Outbox(memory_bytes=250, directory=blocker, disk_bytes=10_000)
    assert outbox.directory is None
    assert [outbox.put(data, records=1) is not None for data in bodies(3)] == [True, True, False]
