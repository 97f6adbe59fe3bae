"""The embedded run's deadline holds even when the child hangs without printing a line."""

import subprocess
import time

import psutil

from pipelines.run import Watchdog


def test_a_silent_child_is_killed_with_its_process_group_at_the_deadline():
    proc = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 60"], start_new_session=True)
    time.sleep(0.3)
    grandchildren = psutil.Process(proc.pid).children()
    started = time.monotonic()
    with Watchdog(proc, timeout=0.5) as watchdog:
        proc.wait(30)
    assert watchdog.fired and time.monotonic() - started < 5
    gone, alive = psutil.wait_procs(grandchildren, timeout=5)
    assert not alive, "the steps a child started die with it"


def test_a_child_that_ends_in_time_is_left_alone():
    proc = subprocess.Popen(["true"], start_new_session=True)
    with Watchdog(proc, timeout=30) as watchdog:
        proc.wait(30)
    assert not watchdog.fired and proc.returncode == 0
    with Watchdog(subprocess.Popen(["true"]), timeout=None) as no_deadline:
        pass
    assert not no_deadline.fired
