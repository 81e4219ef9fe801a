"""SQLite writers of different processes queue on one file lock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from geopunch.adapters.db.faults import WriterLockTimeout
from geopunch.adapters.db.store import WriterLock


def _take_on_a_thread(lock: WriterLock) -> tuple[threading.Event, threading.Thread]:
    """A thread that takes ``lock``, says so, and lets it go."""
    took = threading.Event()

    def take() -> None:
        lock.acquire()
        took.set()
        lock.release()

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return took, thread


def test_a_second_holder_waits_until_the_first_releases(tmp_path: Path) -> None:
    # Two locks on one path stand for two processes: flock excludes open files.
    first, second = WriterLock(str(tmp_path / "db")), WriterLock(str(tmp_path / "db"))
    first.acquire()
    got, waiter = _take_on_a_thread(second)
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


def test_a_wait_past_the_timeout_gives_up_and_leaves_the_lock_free(tmp_path: Path) -> None:
    """A holder that never lets go (a frozen process) used to hold every
    other writer for as long; past the timeout the wait ends. The wait it
    left in the kernel does not keep the lock once the holder lets go."""
    path = str(tmp_path / "db")
    holder, mine, third = WriterLock(path), WriterLock(path, timeout_s=0.3), WriterLock(path)
    holder.acquire()
    started = time.monotonic()
    with pytest.raises(
        WriterLockTimeout, match=r"held .*-writer\.lock for the whole store timeout"
    ):
        mine.acquire()
    assert 0.25 < time.monotonic() - started < 3
    holder.release()
    took, _ = _take_on_a_thread(third)
    assert took.wait(5)
    mine.acquire()  # and the one that gave up takes it again later
    mine.release()


def test_a_thread_of_the_same_process_gives_up_too(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path / "db"), timeout_s=0.2)
    lock.acquire()
    failed: list[BaseException] = []

    def take() -> None:
        try:
            lock.acquire()
        except WriterLockTimeout as exc:
            failed.append(exc)

    waiter = threading.Thread(target=take)
    waiter.start()
    waiter.join(5)
    assert len(failed) == 1
    lock.release()


def test_writers_of_two_processes_exclude_each_other_under_contention(tmp_path: Path) -> None:
    """Two lock objects (two processes to flock) of four threads each: every
    contended wait goes through the kernel's wait on its own thread, and no
    two holders are ever inside at once."""
    path = str(tmp_path / "db")
    locks = [WriterLock(path), WriterLock(path)]
    inside, most, rounds = [0], [0], 300
    guard = threading.Lock()

    def work(lock: WriterLock) -> None:
        for _ in range(rounds):
            lock.acquire()
            try:
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0)
                with guard:
                    inside[0] -= 1
            finally:
                lock.release()

    threads = [threading.Thread(target=work, args=(locks[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert most == [1] and inside == [0]
