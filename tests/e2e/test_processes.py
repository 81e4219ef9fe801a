"""``serve --processes 2``: two workers on one port and one store behave as one
server: every call sees every change acknowledged before it, whichever
worker each connection reaches; a killed worker is replaced; SIGTERM drains
them all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import create_engine

from geopunch.v1 import admin_pb2, geofences_pb2, location_pb2, timeclock_pb2
from tests.conftest import Client, ServerProcess, make_time_clock
from tests.e2e.test_locations_api import add_fence
from tests.e2e.test_trails_api import fresh_user, samples, watch
from tests.e2e.test_trails_api import now as unix_now
from tests.e2e.test_trails_api import report as report_locations
from tests.helpers import pg_migrated, scrape, value

SITE = (40.7128, -74.0060)  # where test_trails_api's samples start


def _worker_of(client: Client) -> int:
    _, call = client.admin.Ping.with_call(admin_pb2.PingRequest(), metadata=client.metadata)
    return int(dict(call.initial_metadata())["x-geopunch-worker"])


def _one_per_worker(address: str, workers: int = 2) -> tuple[list[Client], list[Client]]:
    """A client on each worker (each client its own connection; the kernel
    picks the worker of a connection), and every client opened to find them."""
    found: dict[int, Client] = {}
    opened: list[Client] = []
    while len(found) < workers:
        assert len(opened) < 64, f"64 connections all reached workers {sorted(found)}"
        c = Client(address, own_connection=True)
        opened.append(c)
        found.setdefault(_worker_of(c), c)
    return [found[n] for n in range(workers)], opened


@contextlib.contextmanager
def _two_workers(url: str, tmp: Path) -> Iterator[tuple[ServerProcess, Client, Client]]:
    """``serve --processes 2`` on ``url``, and a client on each worker."""
    # The poller is slowed to ten minutes: what a worker sees of its sibling's
    # changes here comes from the check before each call.
    srv = ServerProcess(
        db_url=url,
        env_extra={"GEOPUNCH_PROCESSES": "2", "GEOPUNCH_INDEX_POLL_MS": "600000"},
    )
    srv.start(tmp)
    (a, b), opened = _one_per_worker(srv.address)
    try:
        yield srv, a, b
    finally:
        for c in opened:
            c.close()
        if srv.proc is not None and srv.proc.poll() is None:
            srv.terminate()


@pytest.fixture
def workers(store_url: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, Client, Client]]:
    """Two workers of the test's own, for tests that kill or stop them."""
    with _two_workers(store_url, tmp_path) as found:
        yield found


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def shared_workers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Client, Client]]:
    """Two workers on each store, shared by the tests that leave them running
    (each works on time clocks of its own)."""
    tmp = tmp_path_factory.mktemp(f"workers-{request.param}")
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp / 'shared.db'}"
        else:
            url = stack.enter_context(pg_migrated())
        yield stack.enter_context(_two_workers(url, tmp))


def _inside(client: Client, tc_id: int) -> bool:
    req = location_pb2.CheckLocationsRequest(time_clock_id=tc_id)
    req.packed.latitudes.append(SITE[0])
    req.packed.longitudes.append(SITE[1])
    return bool(client(client.locations.CheckLocations, req).data.inside_u8 == b"\x01")


def test_each_call_sees_the_other_workers_changes_at_once(
    shared_workers: tuple[ServerProcess, Client, Client],
) -> None:
    _, a, b = shared_workers
    user = fresh_user()
    tc = make_time_clock(a, user_ids=[user], geofence_policy=admin_pb2.REQUIRE_INSIDE)
    assert not _inside(b, tc.id)  # b knows the clock made on a (else NOT_FOUND)
    fence_id = add_fence(b, tc.id, *SITE, 200, on_geofence_exit_action="autoClockOut")
    assert _inside(a, tc.id)
    # A punch on a inside the fence made on b, closed by b's exit detection.
    t0 = unix_now() - 60
    clock_in = timeclock_pb2.ClockInRequest(
        time_clock_id=tc.id, user_id=user, job_id="job-123", timestamp=t0 - 10
    )
    clock_in.location_data.latitude, clock_in.location_data.longitude = SITE
    shift = a(a.timeclock.ClockIn, clock_in).data.shift
    assert shift.start.geofence_id == fence_id
    report_locations(b, samples(tc.id, [0], t0, user))
    (exit_event,) = report_locations(b, samples(tc.id, [900], t0 + 1, user)).results.exits
    assert (exit_event.outcome, exit_event.shift_id) == ("clockedOut", shift.id)
    a(
        a.geofences.DeleteGeofence,
        geofences_pb2.DeleteGeofenceRequest(time_clock_id=tc.id, fence_id=fence_id),
    )
    assert not _inside(b, tc.id)


def test_a_subscriber_on_one_worker_gets_the_other_workers_events(
    shared_workers: tuple[ServerProcess, Client, Client],
) -> None:
    _, a, b = shared_workers
    user = fresh_user()
    tc = make_time_clock(a, user_ids=[user]).id
    add_fence(a, tc, *SITE, 100, on_geofence_exit_action="noAction")
    received: list[location_pb2.Event] = []
    listener = threading.Thread(
        target=lambda: received.extend(watch(a, count=1, time_clock_ids=[tc], timeout=20))
    )
    listener.start()
    time.sleep(0.5)  # the stream waits at the end of the log
    report_locations(b, samples(tc, [0, 500], unix_now() - 60, user))
    listener.join(20)
    assert [e.type for e in received] == ["geofenceEnter"]


def test_a_supervisor_writes_its_stacks_on_sigusr1_and_runs_on(
    shared_workers: tuple[ServerProcess, Client, Client],
) -> None:
    """SIGUSR1 is how an operator (and a test whose server does not stop)
    sees where a process waits. The supervisor ended on it, its default
    action, and took its workers with it."""
    srv, a, b = shared_workers
    assert srv.proc is not None
    before = len(srv.logs())
    srv.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while "in serve_processes" not in srv.logs()[before:]:
        assert time.monotonic() < deadline, "no stacks written"
        time.sleep(0.05)
    assert "Thread 0x" in srv.logs()[before:]
    assert srv.proc.poll() is None
    for c in (a, b):
        c(c.admin.Ping, admin_pb2.PingRequest())


def _worker_pids(srv: ServerProcess) -> dict[int, int]:
    pids: dict[int, int] = {}
    for line in srv.logs().splitlines():
        entry = json.loads(line)
        if entry["msg"] == "worker started":
            pids[entry["worker"]] = entry["pid"]  # the newest one wins
    return pids


def test_a_killed_worker_is_replaced_and_sigterm_drains_all(
    workers: tuple[ServerProcess, Client, Client],
) -> None:
    srv, a, _ = workers
    victim = _worker_pids(srv)[1]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while _worker_pids(srv)[1] == victim:
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.1)
    _serves_on_both(srv, deadline)  # new connections reach both workers again
    # Every worker, the replacement too, is a fork of the supervisor's warm
    # fork server (not a fresh interpreter), named for ps.
    for number, pid in _worker_pids(srv).items():
        worker = psutil.Process(pid)
        assert " ".join(worker.cmdline()).strip() == f"geopunch worker {number}"
        parent = worker.parent()
        assert parent is not None
        assert "multiprocessing.forkserver" in " ".join(parent.cmdline())
    assert value(scrape(srv.http_address), "geopunch_worker_restarts_total", reason="exited") == 1
    assert srv.terminate() == 0
    log = [json.loads(line) for line in srv.logs().splitlines()]
    assert any(e["msg"] == "worker exited; starting it again" for e in log)
    stopped = [e.get("worker") for e in log if e["msg"] == "stopped"]
    assert sorted(stopped, key=str) == [0, 1, None]  # both workers, then the supervisor
    assert a is not None


def test_a_killed_fork_server_leaves_two_workers_and_a_clean_drain(
    workers: tuple[ServerProcess, Client, Client],
) -> None:
    """The workers' exit statuses come through the fork server: killed, it
    makes every worker look dead. The orphans drain and are replaced, never
    doubled, and SIGTERM still drains everyone."""
    srv = workers[0]
    assert srv.proc is not None
    old = _worker_pids(srv)
    (fork_server,) = [
        p
        for p in psutil.Process(srv.proc.pid).children()
        if "multiprocessing.forkserver" in " ".join(p.cmdline())
    ]
    fork_server.kill()
    deadline = time.monotonic() + 60
    while set(_worker_pids(srv).values()) & set(old.values()) or any(
        _alive(pid) for pid in old.values()
    ):
        assert time.monotonic() < deadline, "the orphaned workers were not replaced"
        time.sleep(0.1)
    _serves_on_both(srv, deadline)
    named = [
        p
        for p in psutil.Process(srv.proc.pid).children(recursive=True)
        if " ".join(p.cmdline()).strip().startswith("geopunch worker")
    ]
    assert len(named) == 2, [p.cmdline() for p in named]
    new = _worker_pids(srv)
    assert srv.terminate() == 0
    assert not any(_alive(pid) for pid in new.values())
    log = [json.loads(line) for line in srv.logs().splitlines() if line.startswith("{")]
    assert sum(e["msg"] == "the workers' fork server died; replacing worker" for e in log) == 2
    # each orphan and each replacement drained, then the supervisor
    stopped = [e.get("worker") for e in log if e["msg"] == "stopped"]
    assert sorted(stopped, key=str) == [0, 0, 1, 1, None]


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[ServerProcess]:
    """Two workers, watched closely: silent for 3 s is hung; no grace at a stop."""
    srv = ServerProcess(
        db_url=f"sqlite:///{tmp_path / 'watched.db'}",
        env_extra={
            "GEOPUNCH_PROCESSES": "2",
            "GEOPUNCH_WORKER_TIMEOUT_SECONDS": "3",
            "GEOPUNCH_GRACE_SECONDS": "0",
        },
    )
    srv.start(tmp_path)
    try:
        yield srv
    finally:
        assert srv.terminate() == 0


def test_a_worker_that_stops_answering_is_killed_and_replaced(watched: ServerProcess) -> None:
    """A worker whose event loop stops still holds its share of the port, and
    the kernel keeps handing it connections nobody answers. Stopped (SIGSTOP)
    while it serves, it is killed once it has been silent for the timeout.
    The live worker, silent never, is left alone."""
    srv = watched
    hung = _worker_pids(srv)[1]
    os.kill(hung, signal.SIGSTOP)
    deadline = time.monotonic() + 30
    while _worker_pids(srv)[1] == hung or _alive(hung):
        assert time.monotonic() < deadline, "the stopped worker was not replaced"
        time.sleep(0.1)
    (killed,) = _log_lines(srv, "worker stopped answering; killing it")
    assert (killed["worker"], killed["pid"]) == (1, hung)
    assert killed["silent_s"] >= 3
    (exited,) = _log_lines(srv, "worker exited; starting it again")
    assert (exited["pid"], exited["exitcode"]) == (hung, -signal.SIGKILL)
    _serves_on_both(srv, deadline)
    # Whichever worker the scrape reaches adds up every worker's counts.
    samples = scrape(srv.http_address)
    restarts = "geopunch_worker_restarts_total"
    assert value(samples, restarts, reason="hung") == 1
    assert value(samples, restarts, reason="exited") == 0


def test_a_replaced_worker_that_never_drains_is_killed(watched: ServerProcess) -> None:
    """One that stops while it drains: its fork server dies, so it is told
    to drain and is replaced, and it never gets to. It was left running
    until the supervisor's own stop; it is killed once the drain's deadline
    (the grace period and 15 s) has passed."""
    srv = watched
    draining = _worker_pids(srv)[0]
    os.kill(draining, signal.SIGSTOP)
    assert srv.proc is not None
    (fork_server,) = [
        p
        for p in psutil.Process(srv.proc.pid).children()
        if "multiprocessing.forkserver" in " ".join(p.cmdline())
    ]
    fork_server.kill()
    deadline = time.monotonic() + 45
    while _alive(draining):
        assert time.monotonic() < deadline, "the stopped, replaced worker was left running"
        time.sleep(0.2)
    _serves_on_both(srv, deadline)
    (late,) = _log_lines(srv, "replaced worker did not stop; killing it")
    assert late["pid"] == draining
    assert _log_lines(srv, "worker stopped answering; killing it") == []
    samples = scrape(srv.http_address)
    assert value(samples, "geopunch_worker_restarts_total", reason="fork_server_died") == 2


def _fork_server(srv: ServerProcess) -> psutil.Process:
    assert srv.proc is not None
    (found,) = [
        p
        for p in psutil.Process(srv.proc.pid).children()
        if "multiprocessing.forkserver" in " ".join(p.cmdline())
    ]
    return found


def test_a_fork_server_that_stops_answering_is_replaced(tmp_path: Path) -> None:
    """A worker's start asks the fork server for a fork and waits for the
    new pid. A stopped (or hung) fork server held the supervisor in that wait
    for good: the dead worker's slot stayed empty, no worker was watched any
    more, and SIGTERM went unanswered. Past the start timeout the fork server
    is killed and a new one forks the replacement; a SIGTERM meanwhile ends
    the wait at once."""
    timeout_s = 8
    srv = ServerProcess(
        db_url=f"sqlite:///{tmp_path / 'forks.db'}",
        env_extra={
            "GEOPUNCH_PROCESSES": "2",
            # Long enough for the new fork server's imports on a busy machine:
            # its first fork is waited for as long.
            "GEOPUNCH_WORKER_START_TIMEOUT_SECONDS": str(timeout_s),
            "GEOPUNCH_GRACE_SECONDS": "0",
        },
    )
    srv.start(tmp_path)
    said = "the workers' fork server did not answer; killing it"
    try:
        stopped = _fork_server(srv)
        stopped.suspend()
        os.kill(_worker_pids(srv)[1], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not (waits := _log_lines(srv, said)):
            assert time.monotonic() < deadline, "the supervisor waits on the fork server"
            time.sleep(0.1)
        assert waits[0]["waited_s"] >= timeout_s and waits[0]["pid"] == stopped.pid
        # A new fork server forks every worker (the old ones' exits went
        # through the one killed, so they are replaced as well).
        _serves_on_both(srv, deadline)
        assert _fork_server(srv).pid != stopped.pid
        assert not _alive(stopped.pid)

        # Stopped again, and SIGTERM while the supervisor waits for it.
        _fork_server(srv).suspend()
        restarts = len(_log_lines(srv, "worker exited; starting it again"))
        os.kill(_worker_pids(srv)[0], signal.SIGKILL)
        while len(_log_lines(srv, "worker exited; starting it again")) == restarts:
            assert time.monotonic() < deadline, "the killed worker was not seen"
            time.sleep(0.1)
        time.sleep(1.5)  # past the restart pause: the supervisor waits for a fork
        assert srv.terminate(timeout=20) == 0
        waits = _log_lines(srv, said)
        assert len(waits) == 2 and waits[1]["waited_s"] < timeout_s, waits
        assert _log_lines(srv, "stopped")[-1].get("worker") is None  # the supervisor's own
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.kill()


@pytest.mark.postgres
def test_a_replacement_that_cannot_start_is_killed_and_tried_again(tmp_path: Path) -> None:
    """A replacement worker blocked in its start (here: its store's schema
    table locked, so its first read waits) used to leave its slot empty for
    good: only the first start had a deadline. Past the start timeout it is
    killed and tried again, and once the store answers, one serves."""
    with pg_migrated() as url:
        srv = ServerProcess(
            db_url=url,
            env_extra={"GEOPUNCH_PROCESSES": "2", "GEOPUNCH_WORKER_START_TIMEOUT_SECONDS": "3"},
        )
        srv.start(tmp_path)
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
                victim = _worker_pids(srv)[1]
                os.kill(victim, signal.SIGKILL)
                deadline = time.monotonic() + 30
                while not (stuck := _log_lines(srv, "worker did not start in time; killing it")):
                    assert time.monotonic() < deadline, "the stuck replacement was left alone"
                    time.sleep(0.1)
                assert stuck[0]["worker"] == 1 and stuck[0]["waited_s"] >= 3
                while _alive(stuck[0]["pid"]):  # its stacks first, then the kill
                    assert time.monotonic() < deadline, "the stuck replacement still runs"
                    time.sleep(0.1)
                # Where it was stuck, written by faulthandler before the kill.
                assert " in current_revision\n" in srv.logs()
                conn.rollback()  # the store answers again
            _serves_on_both(srv, time.monotonic() + 30)
            samples = scrape(srv.http_address)
            restarts = "geopunch_worker_restarts_total"
            assert value(samples, restarts, reason="did_not_start") >= 1
            assert value(samples, restarts, reason="exited") == 1
        finally:
            engine.dispose()
            assert srv.terminate() == 0


def _log_lines(srv: ServerProcess, msg: str) -> list[dict[str, Any]]:
    lines = (json.loads(x) for x in srv.logs().splitlines() if x.startswith("{"))
    return [e for e in lines if e["msg"] == msg]


def _serves_on_both(srv: ServerProcess, deadline: float) -> None:
    while True:
        try:
            (a, b), opened = _one_per_worker(srv.address)
            break
        except Exception:  # a replacement is still starting up
            assert time.monotonic() < deadline, "the replacement never served"
            time.sleep(0.2)
    try:
        tc = make_time_clock(a).id
        add_fence(b, tc, *SITE, 100)
        assert _inside(a, tc)
    finally:
        for c in opened:
            c.close()


def test_workers_of_a_killed_supervisor_stop(
    workers: tuple[ServerProcess, Client, Client],
) -> None:
    srv = workers[0]
    pids = list(_worker_pids(srv).values())
    assert srv.proc is not None
    # A worker maps its metrics files, in the directory its supervisor made.
    (metrics_dir,) = {
        Path(m.path).parent
        for m in psutil.Process(pids[0]).memory_maps()
        if "geopunch-metrics-" in m.path
    }
    # Named after its supervisor, so that the next one knows it for a dead one's.
    assert metrics_dir.name.startswith(f"geopunch-metrics-{srv.proc.pid}-")
    srv.kill()  # SIGKILL: the supervisor cannot drain anyone
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "orphaned workers kept running"
        time.sleep(0.1)
    # (multiprocessing's resource tracker also warns, in plain text, that it
    # freed the dead supervisor's shared-memory locks.)
    log = [json.loads(line) for line in srv.logs().splitlines() if line.startswith("{")]
    assert sorted(e["worker"] for e in log if e["msg"] == "stopped") == [0, 1]
    # Left behind for the next supervisor to remove (tests/unit/test_metrics_dir.py),
    # which may already have happened: another test's supervisor, started
    # meanwhile on the other test worker, sweeps every dead one's directory.
    shutil.rmtree(metrics_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_one_worker_saves_the_index_checkpoint_and_every_worker_reads_it(
    tmp_path: Path,
) -> None:
    srv = ServerProcess(
        db_url=f"sqlite:///{tmp_path / 'workers.db'}", env_extra={"GEOPUNCH_PROCESSES": "2"}
    )
    srv.start(tmp_path)
    c = Client(srv.address)
    tc = make_time_clock(c).id
    add_fence(c, tc, *SITE, 100)
    c.close()
    assert srv.terminate() == 0
    log = [json.loads(line) for line in srv.logs().splitlines()]
    writers = {e.get("worker") for e in log if e["msg"] == "fence index checkpoint written"}
    assert len(writers) == 1 and writers != {None}  # one of the workers, not both
    assert (tmp_path / "workers.db.fence-index").exists()

    srv.start(tmp_path)
    (a, b), opened = _one_per_worker(srv.address)
    try:
        assert _inside(a, tc) and _inside(b, tc)
        log = [json.loads(line) for line in srv.logs().splitlines()]
        sources = {e.get("worker"): e["from"] for e in log if e["msg"] == "fence index ready"}
        assert sources == {0: "checkpoint", 1: "checkpoint"}
    finally:
        for c in opened:
            c.close()
        srv.terminate()
