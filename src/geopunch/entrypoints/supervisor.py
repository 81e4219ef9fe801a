"""``serve --processes N``: N server processes on one port and one store.

One Python process runs Python code on one core at a time (the GIL), and a
busy geopunch process spends most of its time there: under load it settles at
about one core however many threads it has. More cores take more processes.
gRPC's own answer for Python servers is the same: worker processes that bind
one port with ``SO_REUSEPORT``, the kernel handing each new connection to one
of them (grpc's ``examples/python/multiprocessing``).

The supervisor (this module's :func:`serve_processes`) migrates the store
once, reserves the port, starts the workers, prints the ready line when every
worker serves, restarts a worker that dies or hangs (its event loop's
heartbeat, :class:`Heartbeats`, falls silent), and on SIGTERM or SIGINT
drains them all.

Workers are forks of multiprocessing's *fork server*: a fresh interpreter,
started with the first worker, that imports the server's modules (numpy,
numba and its compiler, SQLAlchemy, FastAPI, grpc) once and then only forks.
It never serves, opens a store or runs a kernel, so it holds none of grpc's
or numba's pool threads for a fork to lose, which is why a plain ``fork`` of
the supervisor is not used. A worker then costs its own set-up only (about a
quarter of a fresh interpreter's start), which is what a killed worker's
replacement waits for, and the imported modules' objects, frozen out of the
collector's reach before the first fork (:mod:`geopunch.entrypoints.preload`),
stay on pages the workers share.

What the workers share besides the store is two counters in shared memory
(:class:`SharedGenerations`): a worker bumps the *index* counter after each
commit that changed a time clock or its fences, and every worker compares it
with what it last applied before each call, catching up from the store's
change feed when it moved. So a fence created through one connection is seen
by the very next call on any connection, whichever worker it reaches. The
*events* counter wakes event streams in every worker when one of them
commits events. SQLite writers of all workers queue on one file lock (see
``WriterLock``); PostgreSQL orders them itself.

Connections, not calls, are spread: one client channel keeps talking to one
worker. Many clients (kiosks, devices, backends with several channels)
spread evenly; a client with one channel uses one worker.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import multiprocessing.process
import os
import queue
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from geopunch import metrics
from geopunch.config import Config
from geopunch.entrypoints.http_server import CannotListen, metrics_listener
from geopunch.entrypoints.process import (
    Heartbeats,
    SharedGenerations,
    WorkerSlot,
    raise_open_files_limit,
    stop_on_signals,
)
from geopunch.entrypoints.systemd import Notifier

log = logging.getLogger("geopunch")

#: A worker that dies is started again after this pause (a crash loop stays slow).
RESTART_PAUSE_S = 1.0
#: A draining worker is killed this long past its grace period: later than the
#: worker's own cut-off (server.STOP_MARGIN_S, 10 s), which logs its stacks first.
DRAIN_MARGIN_S = 15.0
#: How long a hung worker has to write its stacks before it is killed.
STACKS_PAUSE_S = 0.5
#: What the fork server imports before it forks any worker.
WORKER_PRELOAD = "geopunch.entrypoints.preload"
#: prometheus-client's multi-process mode reads its directory from here.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def reserve_port(listen: str) -> tuple[socket.socket, str]:
    """Bind ``listen`` with SO_REUSEPORT (port 0: a free one) and return the
    socket, kept open while the workers run so the port stays ours, and the
    address with the actual port for the workers to bind as well."""
    host, port = _host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CannotListen(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    actual = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"{shown}:{actual}"


def _worker_main(config: Config, slot: WorkerSlot, ready: Any, replaces: str) -> None:
    """A worker's process: the single-process server, told who it is and,
    for a replacement, why the worker before it ended (counted here, since
    only the workers write to the metrics' shared directory)."""
    import setproctitle

    from geopunch.entrypoints.server import serve
    from geopunch.logs import close_logging, setup_logging

    setup_logging(config.log_level, worker=slot.number, buffer_lines=config.log_buffer_lines)
    # A fork's command line is the fork server's; name the process for ps.
    setproctitle.setproctitle(f"geopunch worker {slot.number}")
    if replaces:
        metrics.WORKER_RESTARTS.labels(replaces).inc()
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_stop_with, args=(parent,), name="supervisor-watch", daemon=True
        ).start()
    try:
        serve(config, lambda _port, _http: ready.put(slot.number), worker=slot)
    finally:
        # multiprocessing ends its children with os._exit, past atexit.
        close_logging()


def _stop_with(parent: multiprocessing.process.BaseProcess) -> None:
    """Once the supervisor is gone (killed, so it drains no one), drain and exit."""
    parent.join()
    os.kill(os.getpid(), signal.SIGTERM)


def serve_processes(config: Config, ready: Callable[[int, str], None] | None = None) -> None:
    """Run ``config.processes`` workers until SIGTERM or SIGINT, then drain them."""
    from geopunch.adapters.db.store import StoppedWaiting, make_engine, migrate

    stop = stop_on_signals()
    # Read (and removed) before any worker is forked: the supervisor is the
    # service systemd knows; it feeds the watchdog, and watches the workers.
    systemd = Notifier.from_env()
    raise_open_files_limit()  # the workers inherit it; each logs it
    engine = make_engine(config.database_url, pool_size=1, timeout_s=config.store_timeout_seconds)
    try:
        revision = migrate(engine, stop=stop)  # once, before any worker opens the store
    except StoppedWaiting:
        log.info("stopped before the store was ready")
        return
    finally:
        engine.dispose()
    log.info("store ready", extra={"fields": {"revision": revision}})
    sock, address = reserve_port(config.listen)
    http_sock, http_address = None, ""
    if config.http_listen:  # the HTTP port too is reserved here and shared by the workers
        http_sock, http_address = reserve_port(config.http_listen)
    # Workers write their metrics to files here, so that a scrape of any of
    # them adds up all (prometheus-client's multi-process mode). A directory
    # of our own starts empty; one the operator names is theirs to empty.
    metrics_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        metrics_dir = _metrics_dir()
        os.environ[MULTIPROC_ENV] = metrics_dir
    stop_metrics = metrics_listener(config.metrics_listen) if config.metrics_listen else None
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([WORKER_PRELOAD])
    worker_config = replace(
        config, listen=address, http_listen=http_address, metrics_listen="", processes=1
    )
    generations = SharedGenerations(ctx)
    heartbeats = Heartbeats(ctx, config.processes)
    started: Any = ctx.Queue()

    born = [0.0] * config.processes  # when each slot's worker was started

    fed: float | None = None  # systemd arms its watchdog once told we are ready

    def feed_watchdog() -> None:
        nonlocal fed
        now = time.monotonic()
        if systemd is None or not systemd.watchdog_s or fed is None:
            return
        if now - fed >= systemd.watchdog_s / 2:
            systemd.alive()
            fed = now

    def start(number: int, replaces: str = "") -> multiprocessing.process.BaseProcess:
        """A worker for slot ``number``, tried again until one starts or we
        are stopped (then one that never started, which has no pid)."""
        while True:
            born[number] = time.monotonic()
            proc = ctx.Process(
                target=_worker_main,
                args=(
                    worker_config,
                    WorkerSlot(number, generations, heartbeats),
                    started,
                    replaces,
                ),
                name=f"geopunch-worker-{number}",
            )
            if _fork(proc, config.worker_start_timeout_seconds, stop, feed_watchdog):
                log.info("worker started", extra={"fields": {"worker": number, "pid": proc.pid}})
                return proc
            if stop.is_set():
                return proc
            time.sleep(RESTART_PAUSE_S)

    workers = [start(n) for n in range(config.processes)]
    # Replaced workers still draining, each with when it is killed if it has not stopped.
    orphans: list[tuple[multiprocessing.process.BaseProcess, float]] = []
    # Workers killed for hanging, until their exit is seen: why.
    killed: dict[int | None, str] = {}

    def stuck(
        n: int, proc: multiprocessing.process.BaseProcess, now: float
    ) -> tuple[str, str, dict[str, float]] | None:
        """Why a running worker is to be killed, if it is: its restart's
        reason, the log's sentence and its fields. Before its first beat it
        is starting, and has the start's timeout; after, the silence's."""
        pid = proc.pid or 0
        if not heartbeats.beaten(n, pid):
            waited = now - born[n]
            if waited > config.worker_start_timeout_seconds:
                said = "worker did not start in time; killing it"
                return "did_not_start", said, {"waited_s": round(waited, 1)}
            return None
        silent = heartbeats.silent_for(n, pid, now)
        if config.worker_timeout_seconds and silent > config.worker_timeout_seconds:
            return "hung", "worker stopped answering; killing it", {"silent_s": round(silent, 1)}
        return None

    try:
        if not _await_ready(workers, started, stop, config.worker_start_timeout_seconds):
            return
        log.info("serving", extra={"fields": {"address": address, "processes": len(workers)}})
        if ready is not None:
            ready(_host_port(address)[1], http_address)
        if systemd is not None:
            systemd.ready()
            fed = 0.0
        while not stop.wait(0.25):
            feed_watchdog()
            now = time.monotonic()
            orphans[:] = [(proc, at) for proc, at in orphans if _running(proc)]
            for i, (proc, at) in enumerate(orphans):
                if now > at:  # its drain hangs, or it was stopped (SIGSTOP)
                    log.error(
                        "replaced worker did not stop; killing it",
                        extra={"fields": {"pid": proc.pid}},
                    )
                    _signal(proc, signal.SIGKILL)
                    orphans[i] = (proc, math.inf)
            for n, proc in enumerate(workers):
                if stop.is_set():
                    break
                running = _running(proc)
                if running and proc.exitcode is None:
                    # Once killed, its exit is on its way.
                    if proc.pid not in killed and (found := stuck(n, proc, now)):
                        reason, why, fields = found
                        _kill_stuck(n, proc, why, **fields)
                        killed[proc.pid] = reason
                    continue
                if running:
                    # The fork server died (its status relay reads as an exit)
                    # and the worker runs on, orphaned, where no one can wait
                    # for it. Left alone it would stop only once its Process
                    # object is collected (that closes its parent sentinel),
                    # and a drain could not wait for it: it is told to drain
                    # now, watched by pid, and a fork of a new fork server
                    # takes its place.
                    log.error(
                        "the workers' fork server died; replacing worker",
                        extra={"fields": {"worker": n, "pid": proc.pid}},
                    )
                    _signal(proc, signal.SIGTERM)
                    orphans.append((proc, now + config.grace_seconds + DRAIN_MARGIN_S))
                    reason = "fork_server_died"
                else:
                    # Its exit is the kernel's word: its status comes through
                    # the fork server, and none comes from one that is
                    # stopped or hung (then the replacement's fork finds out).
                    # A moment for the status, which the log reports.
                    if proc.exitcode is None:
                        proc.join(0.1)
                    reason = killed.get(proc.pid, "exited")
                    log.error(
                        "worker exited; starting it again",
                        extra={"fields": {"worker": n, "pid": proc.pid, "exitcode": proc.exitcode}},
                    )
                    time.sleep(RESTART_PAUSE_S)
                if proc.pid is not None:
                    metrics.process_ended(proc.pid)
                killed.pop(proc.pid, None)
                workers[n] = start(n, reason)
    finally:
        if systemd is not None:
            systemd.stopping()
        _drain([*workers, *(proc for proc, _ in orphans)], config.grace_seconds)
        if stop_metrics is not None:
            stop_metrics()
        if metrics_dir is not None:
            del os.environ[MULTIPROC_ENV]
            shutil.rmtree(metrics_dir, ignore_errors=True)
        sock.close()
        if http_sock is not None:
            http_sock.close()
        log.info("stopped")


def _fork(
    proc: multiprocessing.process.BaseProcess,
    timeout_s: float,
    stop: threading.Event,
    meanwhile: Callable[[], None],
) -> bool:
    """``proc.start()``, given up on past ``timeout_s`` or once ``stop`` is
    set; whether it started.

    The start asks multiprocessing's fork server for a fork and waits for
    the new pid with no deadline, and a fork server that is stopped (SIGSTOP)
    or hung held the supervisor in that wait for good: no worker watched, the
    watchdog unfed, SIGTERM unanswered. So the start runs on a thread of its
    own, and a wait past the deadline, or a stop, kills the fork server: the
    wait ends (the fork server's end of the pipe closes), the next start
    launches a new one, and the workers it forked are replaced as after any
    death of it. ``meanwhile`` runs between the wait's slices."""
    failed: list[Exception] = []

    def run() -> None:
        try:
            proc.start()
        except Exception as exc:  # an end of the fork server's, which the caller retries
            failed.append(exc)

    since = time.monotonic()
    thread = threading.Thread(target=run, name="worker-fork", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.25)
        meanwhile()
        waited = time.monotonic() - since
        if thread.is_alive() and (stop.is_set() or waited > timeout_s):
            _kill_fork_server(waited)
            thread.join(10)
            return False  # its end of the wait (EOF) said nothing more
    if failed:
        log.error("a worker could not be started", extra={"fields": {"error": repr(failed[0])}})
    return not failed


def _kill_fork_server(waited: float) -> None:
    """Kill multiprocessing's fork server and wait until it has exited. Its
    pid lives in the private ``multiprocessing.forkserver._forkserver``, where
    CPython has kept it since the fork server came (3.4); the module offers no
    public way to stop it. Not reaped here: ``ensure_running``, which
    launches the next one, reaps it and would fail on a pid reaped before."""
    from multiprocessing import forkserver

    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    log.error(
        "the workers' fork server did not answer; killing it",
        extra={"fields": {"pid": pid, "waited_s": round(waited, 1)}},
    )
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _pid_running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _await_ready(
    workers: list[multiprocessing.process.BaseProcess],
    started: Any,
    stop: threading.Event,
    timeout_s: float,
) -> bool:
    """True once every worker serves, False if we were stopped first.

    RuntimeError when a worker died or did not start within ``timeout_s``."""
    waiting = set(range(len(workers)))
    deadline = time.monotonic() + timeout_s
    while waiting:
        if stop.is_set():
            return False
        dead = [n for n in waiting if workers[n].exitcode is not None]
        if dead or time.monotonic() > deadline:
            log.error(
                "a worker did not start; stopping",
                extra={"fields": {"workers": sorted(dead or waiting)}},
            )
            raise RuntimeError(f"workers {sorted(dead or waiting)} did not start")
        try:
            waiting.discard(started.get(timeout=0.25))
        except queue.Empty:
            continue
    return True


def _kill_stuck(
    number: int, proc: multiprocessing.process.BaseProcess, why: str, **fields: float
) -> None:
    """A worker whose event loop stopped (a deadlock, a call that never
    yields, a stopped process) still holds its share of the port, and the
    kernel keeps handing it new connections that nothing answers; one that
    never finishes starting (a store that does not answer) leaves its slot
    empty. Its stacks go to the log first (faulthandler answers SIGUSR1 from
    C, so even a thread holding the GIL forever does not stop it). Once its
    exit is seen it is started again, as any worker that died is."""
    log.error(why, extra={"fields": {"worker": number, "pid": proc.pid, **fields}})
    _signal(proc, signal.SIGUSR1)
    time.sleep(STACKS_PAUSE_S)
    _signal(proc, signal.SIGKILL)


def _signal(proc: multiprocessing.process.BaseProcess, sig: int) -> None:
    """By pid, which reaches an orphan too; one that is already gone is left be."""
    if proc.pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)


def _running(proc: multiprocessing.process.BaseProcess) -> bool:
    """Whether a worker's process still runs. Its exit status comes through the
    fork server: it reads as 255 if that helper died, while the worker may
    run on, and never comes from one that is stopped. The kernel has the
    last word."""
    return proc.pid is not None and _pid_running(proc.pid)


#: The directory a supervisor makes for its workers' metrics files:
#: ``geopunch-metrics-<its pid>-<random>`` in the temporary directory.
_METRICS_PREFIX = "geopunch-metrics-"
_METRICS_DIR = re.compile(rf"{_METRICS_PREFIX}(\d{{1,9}})-\w+")


def _metrics_dir() -> str:
    """A new directory for the workers' metrics files, named after this
    supervisor. Those of supervisors that died without removing theirs
    (SIGKILL, the OOM killer) are removed first: each would otherwise stay
    in the temporary directory for good."""
    tmp = tempfile.gettempdir()
    with os.scandir(tmp) as entries:
        for entry in entries:
            found = _METRICS_DIR.fullmatch(entry.name)
            if (
                found
                and entry.is_dir(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_uid == os.getuid()
                and not _pid_running(int(found[1]))
            ):
                shutil.rmtree(entry.path, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-", dir=tmp)


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: it runs
        return True
    try:  # an exited process its parent has not reaped yet is gone too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc: trust the signal probe


def _drain(workers: list[multiprocessing.process.BaseProcess], grace_s: float) -> None:
    """SIGTERM to every live worker; each drains as a single server drains. One
    that outlives its grace period and margin is killed."""
    live = [proc for proc in workers if proc.pid is not None and _running(proc)]
    for proc in live:
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s + DRAIN_MARGIN_S
    for proc in live:
        while _running(proc) and time.monotonic() < deadline:
            if proc.exitcode is None:
                proc.join(0.1)
            else:  # an orphan: its status never comes, so watch its pid
                time.sleep(0.1)
        if _running(proc):
            log.error("worker did not stop; killing it", extra={"fields": {"pid": proc.pid}})
            _signal(proc, signal.SIGKILL)
            proc.join(5)
