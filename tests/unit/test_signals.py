"""A stop signal reaches the process's stop event whatever lock the main
thread holds when it comes."""

from __future__ import annotations

import subprocess
import sys

#: A process that holds, on its main thread, the stop event's own lock (as
#: ``Event.wait`` does between its checks) and the log buffer's, when SIGTERM
#: comes: the signal's handler runs right there, on that thread.
_HELD_WHEN_SIGNALLED = """
import logging, os, signal
from geopunch.entrypoints.process import stop_on_signals
from geopunch.logs import setup_logging

setup_logging("INFO", buffer_lines=100)
(buffered,) = logging.getLogger().handlers
stop = stop_on_signals()
with stop._cond, buffered._lines.mutex:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100_000):  # bytecodes, between which the handler runs
        pass
assert stop.wait(10), "the stop event was never set"
print("stopped")
"""


def test_a_stop_signal_that_comes_while_the_main_thread_holds_a_lock_still_stops() -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _HELD_WHEN_SIGNALLED],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("the signal's handler waited for a lock its own thread held") from None
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped"
    assert '"msg":"signal received"' in done.stderr and '"signal":"SIGTERM"' in done.stderr
