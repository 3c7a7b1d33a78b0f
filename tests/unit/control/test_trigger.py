"""The trigger that turns a burst of watch events into one run (driver/control/cluster)."""

import threading
import time

from driver.control.cluster.trigger import Trigger


def test_pulls_while_it_runs_make_one_more_run_not_one_each():
    lock = threading.RLock()
    running, release = threading.Event(), threading.Event()
    runs = []

    def run():
        runs.append(len(runs))
        running.set()
        release.wait(5)

    trigger = Trigger("test", run, lock)
    trigger.start()
    try:
        trigger.pull()
        assert running.wait(5)
        for _ in range(10):
            trigger.pull()
        release.set()
        deadline = time.monotonic() + 5
        while len(runs) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # a run per pull would have come by now: each one is instant
    finally:
        trigger.close()
    assert runs == [0, 1]


def test_a_run_waiting_for_the_lock_when_the_trigger_closes_does_not_run():
    """close() gives up waiting while its caller holds the lock; the run that gets the lock
    after it must not write into what the caller closed meanwhile."""
    lock = threading.RLock()
    runs = []
    trigger = Trigger("test", lambda: runs.append(1), lock)
    trigger.start()
    with lock:
        trigger.pull()
        closer = threading.Thread(target=trigger.close)
        closer.start()
        closer.join(0.5)  # close() is waiting for the run, which waits for the lock
    closer.join(10)
    assert not closer.is_alive()
    assert runs == []
