"""Two replicas behind PgBouncer in session mode, as docs/operations.md
advises: they start (the store's settings are set after connecting, not in
the start-up packet PgBouncer refuses), punch, list, answer the board, and
see each other's changes. In transaction or statement mode a server refuses
to start. Needs the ``pgbouncer`` program (Debian's package;
``.ci/run`` installs it) beside the tests' PostgreSQL."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from geopunch.v1 import admin_pb2
from tests.conftest import Client, ServerProcess, make_time_clock
from tests.e2e.test_locations_api import add_fence
from tests.e2e.test_replicas import SITE, _eventually, _inside
from tests.e2e.test_time_activities import USER, every, punch, statuses
from tests.helpers import free_port, pg_migrated, wait_listening

pytestmark = pytest.mark.postgres


def _program() -> str:
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )
    if found is None:
        if os.environ.get("GEOPUNCH_REQUIRE_PG"):
            pytest.fail("GEOPUNCH_REQUIRE_PG is set but pgbouncer is not installed")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    return found


def _unprivileged() -> str:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name).pw_name
        except KeyError:
            continue
    pytest.fail("no unprivileged user to run pgbouncer as")


@contextmanager
def _bouncer(tmp_path: Path, mode: str) -> Iterator[str]:
    """A PgBouncer in ``mode`` in front of a fresh migrated database; yields
    the store URL through it."""
    program = _program()
    with pg_migrated() as direct:
        url = make_url(direct)
        port = free_port()
        conf = tmp_path / f"bouncer-{mode}"
        conf.mkdir()
        (conf / "users.txt").write_text(f'"{url.username}" ""\n')
        (conf / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={url.host} port={url.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
            f"auth_type = trust\nauth_file = {conf / 'users.txt'}\n"
            f"admin_users = {url.username}\n"
            f"pool_mode = {mode}\nmax_client_conn = 200\ndefault_pool_size = 60\n"
            "unix_socket_dir =\n"
        )
        # PgBouncer will not run as root; it reads its files before it
        # changes user, so they may stay in the test's private directory.
        as_user = ["-u", _unprivileged()] if os.geteuid() == 0 else []
        with (conf / "bouncer.log").open("w") as log:
            proc = subprocess.Popen(
                [program, *as_user, str(conf / "pgbouncer.ini")],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            said = (conf / "bouncer.log").read_text
            wait_listening(port, proc, 10, "pgbouncer did not listen", said)
            yield url.set(port=port).render_as_string(hide_password=False)
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.fixture
def bouncer(tmp_path: Path) -> Iterator[str]:
    """A PgBouncer in session mode, as docs/operations.md advises."""
    with _bouncer(tmp_path, "session") as url:
        yield url


def _clients_through(port: int, user: str, database: str) -> int:
    """Client connections PgBouncer holds for ``database`` (its SHOW CLIENTS)."""
    with psycopg.connect(
        host="127.0.0.1", port=port, user=user, dbname="pgbouncer", autocommit=True
    ) as admin:
        shown = admin.execute("SHOW CLIENTS")
        rows = shown.fetchall()
        columns = [c.name for c in shown.description or ()]
    at = columns.index("database")
    return sum(1 for row in rows if row[at] == database)


def test_replicas_behind_pgbouncer_in_session_mode(bouncer: str, tmp_path: Path) -> None:
    servers = [ServerProcess(db_url=bouncer) for _ in range(2)]
    clients: list[Client] = []
    try:
        for srv in servers:
            srv.start(tmp_path)
            clients.append(Client(srv.address))
        a, b = clients
        url = make_url(bouncer)
        assert url.port is not None and url.username is not None and url.database is not None
        assert _clients_through(url.port, url.username, url.database) >= 2

        tc = make_time_clock(a, geofence_policy=admin_pb2.REQUIRE_INSIDE, user_ids=[USER])
        fence_id = add_fence(a, tc.id, *SITE, 200)
        _eventually(lambda: _inside(b, tc.id) is True)  # a's change, seen by b

        location = {"latitude": SITE[0], "longitude": SITE[1]}
        shift = punch(b, "ClockIn", tc.id, jobId="job-123", locationData=location).data.shift
        assert shift.start.geofence_id == fence_id
        [status] = statuses(a, tc.id, USER)
        assert status["state"] == "ON_SHIFT"
        punch(a, "ClockOut", tc.id, locationData=location)
        now = int(time.time())
        [listed] = every(b, tc.id, now - 3600, now + 60)
        assert listed["id"] == shift.id and not listed["isOpen"]
    finally:
        for c in clients:
            c.close()
        for srv in servers:
            if srv.proc is not None and srv.proc.poll() is None:
                assert srv.terminate() == 0


def test_a_server_behind_a_pooler_in_transaction_mode_refuses_to_start(tmp_path: Path) -> None:
    """Each transaction on whichever server connection is free: the driver's
    prepared statements met other clients' and calls failed as internal
    errors, and no replica heard another's changes. The server says so at
    start instead, and exits. (In statement mode PgBouncer refuses the
    first transaction block itself, and the server exits on its words.)"""
    with _bouncer(tmp_path, "transaction") as url:
        served = subprocess.run(
            [
                *(sys.executable, "-m", "geopunch", "serve", "--database-url", url),
                *("--listen", "127.0.0.1:0", "--http-listen", "off"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert served.returncode == 2, served.stderr[-3000:]
    said = served.stderr.strip().splitlines()[-1]
    assert said.startswith(
        "geopunch: a notification sent on one connection to the store did not reach another"
    ), said
    assert "pool_mode = session" in said
