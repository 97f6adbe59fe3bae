"""Background parts report their own death at once, and the demo stops on it instead of timing out."""

import threading
import time

import pytest

from sandbox.background import Background, BackgroundDied
from sandbox.demo import Demo, DemoError, Timeline
from sandbox.settings import Settings


def test_a_part_that_raises_is_reported_with_its_error():
    part = Background("traffic", lambda task: 1 / 0).start()
    part.finished.wait(5)
    with pytest.raises(BackgroundDied, match="traffic died: ZeroDivisionError"):
        part.check()


def test_a_part_that_ends_while_it_should_run_is_reported():
    part = Background("traffic", lambda task: "done").start()
    part.finished.wait(5)
    with pytest.raises(BackgroundDied, match="ended early"):
        part.check()
    part.check(expect_running=False)  # at the end of the story, ending is what it should do
    assert part.join(1) == "done"


def test_a_part_without_progress_is_reported_as_stalled_and_progress_keeps_it_alive():
    release = threading.Event()

    def work(task: Background) -> None:
        while not release.is_set():
            task.progress()
            time.sleep(0.01)
        release.wait()

    part = Background("traffic", work, stall_seconds=0.3).start()
    time.sleep(0.5)
    part.check()  # progressing
    stuck = Background("labels", lambda task: release.wait(), stall_seconds=0.2).start()
    time.sleep(0.4)
    with pytest.raises(BackgroundDied, match="labels made no progress"):
        stuck.check()
    release.set()


def test_the_demo_fails_at_once_naming_its_dead_traffic(tmp_path):
    demo = Demo(Settings(home=tmp_path), Timeline())
    demo.traffic = Background("the demo's traffic", lambda task: 1 / 0).start()
    demo.traffic.finished.wait(5)
    started = time.monotonic()
    with pytest.raises(DemoError, match="drift falls on v2: the demo's traffic died: ZeroDivisionError"):
        demo.wait("drift falls on v2", lambda: False, timeout=300)
    assert time.monotonic() - started < 5
