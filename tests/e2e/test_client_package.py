"""The slim client package (clients/python), installed alone into a fresh
virtual environment, against a real server: punches with automatic keys,
events with a persisted cursor, CheckLocations with numpy, and the offline
queue, including a flush killed with SIGKILL halfway.

The client runs in that environment's interpreter: its stubs cannot share a
process with the server's (the same protobuf names).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from geopunch.v1 import admin_pb2, timeclock_pb2
from tests.conftest import API_KEY, Client, ServerProcess, make_time_clock

ROOT = Path(__file__).resolve().parents[2]
HOUR = 3600


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv (no pip, no system packages) with only the client package."""
    tmp = tmp_path_factory.mktemp("client-venv")
    source = tmp / "source"
    # Built from a copy: setuptools writes build/ beside the sources.
    shutil.copytree(ROOT / "clients/python", source, ignore=shutil.ignore_patterns("build"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "-q", str(source)], check=True)
    yield python


def run(python: Path, script: str, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        [str(python), "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",  # never the checkout: nothing of the server package on the path
    )
    if check and done.returncode != 0:
        raise AssertionError(f"client script failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def activities(client: Client, time_clock_id: int, user_id: int) -> list[tuple[str, int, int]]:
    """(kind, start, end) of a user's stored activities, in start order."""
    now = int(time.time())
    req = timeclock_pb2.ListTimeActivitiesRequest(
        time_clock_id=time_clock_id,
        start_time=now - 3 * 86_400,
        end_time=now + 3600,
        user_ids=[user_id],
        page_size=10_000,
    )
    found = client(client.timeclock.ListTimeActivities, req).data.time_activities
    return [(a.kind, a.start.timestamp, a.end.timestamp if a.end.timestamp else -1) for a in found]


def test_the_client_installs_alone_and_small(client_python: Path) -> None:
    out = run(
        client_python,
        """
        import importlib.util, json, sys, sysconfig
        import geopunch_client
        from geopunch_client.v1 import timeclock_pb2_grpc
        missing = [m for m in ("geopunch", "numpy", "numba", "pyarrow", "sqlalchemy")
                   if importlib.util.find_spec(m) is None]
        print(json.dumps({"missing": missing, "site": sysconfig.get_paths()["purelib"]}))
        """,
    )
    found = json.loads(out)
    assert found["missing"] == ["geopunch", "numpy", "numba", "pyarrow", "sqlalchemy"]
    site = Path(found["site"])
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    assert size < 60 * 2**20, f"{size / 2**20:.1f} MiB installed"


def test_punches_get_keys_and_events_resume_from_a_saved_cursor(
    client_python: Path, server: ServerProcess, client: Client, tmp_path: Path
) -> None:
    tc = make_time_clock(client, user_ids=[71, 72])
    cursor = tmp_path / "cursor"
    script = """
        import sys
        from geopunch_client import GeopunchClient
        from geopunch_client.v1 import timeclock_pb2
        address, key, tc, cursor = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
        with GeopunchClient(address, key) as c:
            if sys.argv[5] == "punch":
                shift = c.clock_in(tc, 71, job_id="job-123").data.shift
                req = timeclock_pb2.ClockOutRequest(time_clock_id=tc, user_id=71)
                first = c.punch("clock_out", req).data.shift
                again = c.punch("clock_out", req).data.shift  # the same key: the same answer
                print(shift.id == first.id == again.id, bool(req.idempotency_key))
            seen = []
            for event in c.watch_events(cursor, time_clock_ids=[tc]):
                seen.append(event.type)
                if len(seen) == int(sys.argv[6]):
                    break
            print(",".join(seen))
    """
    args = (server.address, API_KEY, str(tc.id), str(cursor))
    out = run(client_python, script, *args, "punch", "2").split("\n")
    assert out[0] == "True True"
    assert out[1] == "clockIn,clockOut"
    assert cursor.read_text() != ""  # the clockIn event was handled: saved
    # Restarted: the clockOut was handed out but the loop left before asking
    # for more, so it comes again (at least once), then the new punch's event.
    client(
        client.timeclock.ClockIn,
        timeclock_pb2.ClockInRequest(time_clock_id=tc.id, user_id=72, job_id="job-123"),
    )
    out = run(client_python, script, *args, "watch", "2").split("\n")
    assert out[0] == "clockOut,clockIn"


def test_check_locations_with_numpy(
    client_python: Path, server: ServerProcess, client: Client
) -> None:
    pip = [sys.executable, "-m", "pip", "--python", str(client_python)]
    subprocess.run([*pip, "install", "-q", "--disable-pip-version-check", "numpy"], check=True)
    tc = make_time_clock(client)
    from geopunch.v1 import common_pb2, geofences_pb2

    fence = geofences_pb2.Geofence(
        name="Yard",
        fence_size=200,
        location=common_pb2.Location(address="1 Road", latitude=48.0, longitude=11.0),
    )
    client(
        client.geofences.CreateGeofences,
        geofences_pb2.CreateGeofencesRequest(time_clock_id=tc.id, geofences=[fence]),
    )
    out = run(
        client_python,
        """
        import sys
        import numpy as np
        from geopunch_client import GeopunchClient
        with GeopunchClient(sys.argv[1], sys.argv[2]) as c:
            r = c.check_locations([48.0, 48.0, 48.1], [11.0, 11.002, 11.0],
                                  time_clock_id=int(sys.argv[3]), with_distance=True)
            print(r.inside.tolist(), np.diff(r.match_offsets).tolist(),
                  bool(r.match_fence_ids[0].startswith(b"fence-")), bool(r.distances[0] < 0))
        """,
        server.address,
        API_KEY,
        str(tc.id),
    )
    assert out.strip() == "[True, True, False] [1, 1, 0] True True"


QUEUE_SCRIPT = """
import json, sys, time
from geopunch_client import GeopunchClient, OfflineQueue
address, key, db, action = sys.argv[1:5]
queue = OfflineQueue(db)
if action == "flush":
    with GeopunchClient(address, key, timeout=5, retries=1) as c:
        print(json.dumps(queue.flush(c).__dict__))
    print(json.dumps(queue.rejected()))
else:
    for kind, tc, user, ts, *extra in json.loads(sys.argv[5]):
        if kind == "clock_in":
            queue.clock_in(tc, user, job_id="job-123", timestamp=ts)
        elif kind == "clock_out":
            queue.clock_out(tc, user, timestamp=ts)
        elif kind == "start_break":
            queue.start_break(tc, user, "rest", timestamp=ts)
        else:
            queue.end_break(tc, user, timestamp=ts)
"""


def queue_run(python: Path, *args: str) -> list[str]:
    return run(python, QUEUE_SCRIPT, *args).strip().split("\n")


def break_clock(client: Client, users: list[int]) -> int:
    rest = admin_pb2.ManualBreakType(id="rest", name="Rest", is_paid=True)
    made = make_time_clock(
        client, user_ids=users, manual_breaks_enabled=True, manual_break_types=[rest]
    )
    return int(made.id)


def test_the_offline_queue_sends_recent_punches_and_routes_old_ones(
    client_python: Path, server: ServerProcess, client: Client, tmp_path: Path
) -> None:
    tc = break_clock(client, [81, 82, 83])
    now = int(time.time())
    old = now - 14 * HOUR
    punches = [
        # 81: an old shift with a break in it: a shift, the break, the resumed shift
        ("clock_in", tc, 81, old),
        ("start_break", tc, 81, old + 1800),
        ("end_break", tc, 81, old + 2400),
        ("clock_out", tc, 81, old + 3600),
        # 82: recent: sent as live punches
        ("clock_in", tc, 82, now - 2 * HOUR),
        ("clock_out", tc, 82, now - HOUR),
        # 83: clocked in long ago and still on the clock: a completed shift up
        # to the flush, a live one from there
        ("clock_in", tc, 83, old),
        # 84 is not on the clock: refused, kept aside with the reason
        ("clock_in", tc, 84, now - 60),
    ]
    db = str(tmp_path / "queue.db")
    queue_run(client_python, server.address, API_KEY, db, "add", json.dumps(punches))

    offline = json.loads(queue_run(client_python, "127.0.0.1:9", API_KEY, db, "flush")[0])
    assert offline["offline"] and offline["remaining"] == len(punches)

    report, rejected = queue_run(client_python, server.address, API_KEY, db, "flush")
    assert json.loads(report) == {
        "sent": 2,
        "routed": 5,
        "activities": 4,
        "rejected": 1,
        "remaining": 0,
        "offline": False,
    }
    assert [r[1] for r in json.loads(rejected)] == ["FAILED_PRECONDITION"]
    assert activities(client, tc, 81) == [
        ("shift", old, old + 1800),
        ("manualBreak", old + 1800, old + 2400),
        ("shift", old + 2400, old + 3600),
    ]
    assert activities(client, tc, 82) == [("shift", now - 2 * HOUR, now - HOUR)]
    (done, running) = activities(client, tc, 83)
    assert done[:2] == ("shift", old) and running == ("shift", done[2], -1)
    assert now - 5 <= done[2] <= time.time()

    # The clock-out arrives: it ends the live shift.
    more = [("clock_out", tc, 83, None)]
    queue_run(client_python, server.address, API_KEY, db, "add", json.dumps(more))
    report, _ = queue_run(client_python, server.address, API_KEY, db, "flush")
    assert json.loads(report)["sent"] == 1 and json.loads(report)["remaining"] == 0
    (_, closed) = activities(client, tc, 83)
    assert closed[:2] == ("shift", done[2]) and closed[2] >= done[2]
    # Flushing again sends nothing.
    report, _ = queue_run(client_python, server.address, API_KEY, db, "flush")
    assert json.loads(report)["sent"] == json.loads(report)["routed"] == 0


def test_a_flush_killed_halfway_loses_nothing_and_punches_nothing_twice(
    client_python: Path, server: ServerProcess, client: Client, tmp_path: Path
) -> None:
    users = list(range(9000, 9080))
    tc = break_clock(client, users)
    now = int(time.time())
    punches = []
    expected: dict[int, list[tuple[str, int, int]] | None] = {}
    for i, user in enumerate(users):
        # Even users recent (live punches), odd ones old (time activities);
        # every fourth is still on the clock after an old clock-in (split).
        start = (now - 6 * HOUR if i % 2 == 0 else now - 20 * HOUR) + i * 60
        if i % 4 == 3:
            punches.append(("clock_in", tc, user, start))
            expected[user] = None
            continue
        punches += [
            ("clock_in", tc, user, start),
            ("start_break", tc, user, start + 600),
            ("end_break", tc, user, start + 900),
            ("clock_out", tc, user, start + 1800),
        ]
        expected[user] = [
            ("shift", start, start + 600),
            ("manualBreak", start + 600, start + 900),
            ("shift", start + 900, start + 1800),
        ]
    db = tmp_path / "queue.db"
    queue_run(client_python, server.address, API_KEY, str(db), "add", json.dumps(punches))

    flush = subprocess.Popen(
        [str(client_python), "-c", QUEUE_SCRIPT, server.address, API_KEY, str(db), "flush"],
        stdout=subprocess.DEVNULL,
        cwd="/",
    )
    left = len(punches)
    with sqlite3.connect(db, timeout=30) as watch:
        deadline = time.monotonic() + 60
        while left > len(punches) // 2 and time.monotonic() < deadline:
            (left,) = watch.execute("SELECT count(*) FROM queued").fetchone()
            time.sleep(0.002)
    os.kill(flush.pid, signal.SIGKILL)
    flush.wait()
    assert 0 < left < len(punches), "the flush was not caught halfway"

    report, rejected = queue_run(client_python, server.address, API_KEY, str(db), "flush")
    assert json.loads(report)["remaining"] == 0 and json.loads(rejected) == []
    for i, user in enumerate(users):
        found = activities(client, tc, user)
        if expected[user] is not None:
            assert found == expected[user], user
        else:
            start = now - 20 * HOUR + i * 60
            (done, running) = found
            assert done[:2] == ("shift", start) and running == ("shift", done[2], -1), user


def test_watch_events_reconnects_across_a_server_restart(
    client_python: Path, tmp_path: Path
) -> None:
    """The server ends streams with UNAVAILABLE when it stops; the client
    reconnects (to the server started again on the same port and store) and
    goes on from its cursor, missing nothing."""
    from tests.helpers import free_port

    port = free_port()
    db = f"sqlite:///{tmp_path / 'restart.db'}"
    env = {"GEOPUNCH_LISTEN": f"127.0.0.1:{port}"}
    first = ServerProcess(db_url=db, env_extra=env)
    first.start(tmp_path)
    c = Client(first.address)
    tc = int(make_time_clock(c, user_ids=[61]).id)
    t0 = int(time.time()) - 600

    def punch(user_client: Client, i: int) -> None:
        user_client(
            user_client.timeclock.ClockIn,
            timeclock_pb2.ClockInRequest(time_clock_id=tc, user_id=61, timestamp=t0 + 10 * i),
        )
        user_client(
            user_client.timeclock.ClockOut,
            timeclock_pb2.ClockOutRequest(time_clock_id=tc, user_id=61, timestamp=t0 + 10 * i + 5),
        )

    punch(c, 0)
    c.close()
    watcher = subprocess.Popen(
        [
            str(client_python),
            "-c",
            textwrap.dedent(
                """
                import sys
                from geopunch_client import GeopunchClient
                with GeopunchClient(sys.argv[1], sys.argv[2]) as c:
                    for n, e in enumerate(c.watch_events(time_clock_ids=[int(sys.argv[3])]), 1):
                        print(e.seq, e.type, flush=True)
                        if n == 4:
                            break
                """
            ),
            f"127.0.0.1:{port}",
            API_KEY,
            str(tc),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        assert watcher.stdout is not None
        seen = [watcher.stdout.readline().split() for _ in range(2)]
        assert [t for _, t in seen] == ["clockIn", "clockOut"]
        assert first.terminate() == 0
        second = ServerProcess(db_url=db, env_extra=env)
        second.start(tmp_path)
        try:
            c = Client(second.address)
            punch(c, 1)
            c.close()
            more = [watcher.stdout.readline().split() for _ in range(2)]
            assert watcher.wait(60) == 0
        finally:
            second.terminate()
    finally:
        watcher.kill()
        watcher.wait()
        assert watcher.stdout is not None
        watcher.stdout.close()
    assert [t for _, t in more] == ["clockIn", "clockOut"]
    seqs = [int(s) for s, _ in seen + more]
    assert seqs == sorted(set(seqs))  # nothing twice, in order
