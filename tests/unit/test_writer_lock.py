"""SQLite writers of different processes queue on one file lock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from geopunch.adapters.db.store import WriterLock


def test_a_second_holder_waits_until_the_first_releases(tmp_path: Path) -> None:
    # Two locks on one path stand for two processes: flock excludes open files.
    first, second = WriterLock(str(tmp_path / "db")), WriterLock(str(tmp_path / "db"))
    first.acquire()
    got = threading.Event()

    def take() -> None:
        second.acquire()
        got.set()
        second.release()

    waiter = threading.Thread(target=take)
    waiter.start()
    assert not got.wait(0.3)
    first.release()
    assert got.wait(5)
    waiter.join()


def test_another_process_waits_and_a_dead_holder_frees_the_lock(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    mine = WriterLock(path)
    mine.acquire()
    holder = (
        "import sys, time; from geopunch.adapters.db.store import WriterLock; "
        "lock = WriterLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder, path], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert proc.poll() is None
        mine.release()
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        took = threading.Event()

        def take() -> None:
            mine.acquire()
            took.set()

        threading.Thread(target=take, daemon=True).start()
        assert not took.wait(0.3)  # the other process holds it
        proc.kill()  # dies holding the lock: the kernel releases it
        proc.wait(10)
        assert took.wait(5)
        mine.release()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
