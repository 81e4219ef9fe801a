"""Test servers and command-line runs forked from a warm interpreter instead
of started from nothing.

A server process spends about 2 s of CPU before it listens, most of it
importing numpy, numba, SQLAlchemy and FastAPI and setting up numba's
compiler: nearly all of what the suite's ~80 short-lived servers cost. Here
each pytest process keeps one multiprocessing *fork server*, a fresh
interpreter that has imported those modules once (and so loaded numba's
cached kernels' machinery) and forks a child for every server. The child
then runs the command line exactly as ``python -m geopunch ...`` would, with
its own arguments, environment, stdout and log file, and sets up everything
else itself: its store, gRPC and its threads, which is why the fork server
imports but never starts anything (it holds no thread of grpc's or numba's
pool to be lost in a fork).

The same fork server runs the tests' ``geopunch trails``, ``keys`` and
``accounts`` commands (:func:`run`); ``--version`` still runs in a fresh
interpreter, as does the shared session server.

What a fork does not give is a process image of its own: ``/proc/PID/cmdline``
and ``environ`` show the fork server's. Nor do variables a library reads when
it is imported (numba's ``NUMBA_*``, prometheus-client's
``PROMETHEUS_MULTIPROC_DIR``) take effect: they were read in the fork server.
Tests that depend on either start the server with ``fresh_interpreter=True``.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.reduction
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

#: Imported once in the fork server; what they cost is what a fork saves.
PRELOAD = ["tests.forked_server_preload"]

_ctx = multiprocessing.get_context("forkserver")
_ctx.set_forkserver_preload(PRELOAD)
_running: set[ForkedProcess] = set()


def _child(argv: list[str], env: dict[str, str], out: Any, err: Any) -> None:
    """In the forked child: become ``python -m geopunch *argv``."""
    for shared, target in ((out, 1), (err, 2)):
        fd = shared.detach()
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [str(Path(sys.prefix) / "geopunch"), *argv]
    from geopunch.entrypoints.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.exit(code)


class ForkedProcess:
    """What the tests use of ``subprocess.Popen``, for a forked ``geopunch``
    command: its stdout is a pipe (``stdout``) unless ``stdout_fd`` is given,
    its stderr goes to ``stderr_fd``."""

    def __init__(
        self, argv: list[str], env: dict[str, str], stderr_fd: int, stdout_fd: int | None = None
    ) -> None:
        self.args = argv
        read, write = os.pipe() if stdout_fd is None else (-1, stdout_fd)
        try:
            self._process = _ctx.Process(
                target=_child,
                args=(
                    argv,
                    env,
                    multiprocessing.reduction.DupFd(write),
                    multiprocessing.reduction.DupFd(stderr_fd),
                ),
                name=f"geopunch {' '.join(argv)}",
            )
            self._process.start()
        finally:
            if stdout_fd is None:
                os.close(write)
        self.stdout: IO[str] | None = os.fdopen(read, "r") if stdout_fd is None else None
        self.pid: int = self._process.pid  # type: ignore[assignment]
        _running.add(self)

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        code = self._process.exitcode
        if code is not None:
            _running.discard(self)
        return code

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self.poll()
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        # The fork server reaps a child before its status reaches us: one
        # that poll() still calls running may be gone already.
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``subprocess.run([python, -m, geopunch, *argv], capture_output=True,
    text=True)``, forked: for the tests' many short command-line runs."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = ForkedProcess(argv, dict(os.environ), err.fileno(), out.fileno())
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, code, out.read().decode(), err.read().decode())


@atexit.register
def _kill_leftovers() -> None:
    """A server a failed test left running must not hold the pytest process's
    exit: multiprocessing would join it at exit."""
    for proc in list(_running):
        proc.kill()
        proc.wait(10)
