"""Assertion helpers for rich gRPC errors, waiting for a condition, a
PostgreSQL schema per test, and a webhook deliverer on a thread of its own."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, NamedTuple

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, NullPool, create_engine, make_url, text

from geopunch.adapters.db.store import SqlUnitOfWork, SqlUnitOfWorkFactory, make_engine, migrate
from geopunch.adapters.wakeup import Stop, Wakeup
from geopunch.adapters.webhook_http import HttpPoster
from geopunch.domain.accounts import DEFAULT_ACCOUNT
from geopunch.domain.models import TimeClock
from geopunch.domain.ports import WebhookPoster
from geopunch.service.delivery import Deliverer, DeliverySettings

PG_URL = os.environ.get("GEOPUNCH_TEST_PG_URL", "")


def eventually(check: Callable[[], bool], within_s: float, what: str) -> None:
    """Wait until ``check()`` holds, failing with ``what`` after ``within_s``."""
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(
    port: int, proc: subprocess.Popen[Any], within_s: float, what: str, output: Callable[[], str]
) -> None:
    """Wait until something accepts connections on loopback ``port``,
    failing with ``what`` after ``within_s``, or with ``output()`` should
    ``proc`` end first."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None, output()
            assert time.monotonic() < deadline, what
            time.sleep(0.05)


def _pg_admin() -> Engine:
    """An engine on ``GEOPUNCH_TEST_PG_URL`` that can create schemas and
    databases; skips without PostgreSQL, or fails when
    ``GEOPUNCH_REQUIRE_PG`` says the tests must run there."""
    required = bool(os.environ.get("GEOPUNCH_REQUIRE_PG"))
    if not PG_URL:
        if required:
            pytest.fail("GEOPUNCH_REQUIRE_PG is set but GEOPUNCH_TEST_PG_URL is empty")
        pytest.skip("set GEOPUNCH_TEST_PG_URL to run the store tests on PostgreSQL")
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        admin.dispose()
        if required:
            raise
        pytest.skip(f"PostgreSQL at {PG_URL} unreachable: {exc}")
    return admin


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh, empty schema on ``GEOPUNCH_TEST_PG_URL``; yields a URL that
    uses it and drops it afterwards."""
    admin = _pg_admin()
    schema = f"gp_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


#: This process's migrated template database, once made (see pg_migrated).
_pg_template: list[_Template] = []
#: Stores pg_migrated handed out and took back, reset to the template's
#: content: handed out again before a new one is cloned.
_pg_free: list[str] = []

#: A fingerprint of the public schema's structure: relations, columns,
#: constraints, indexes, triggers and functions.
_SHAPE = """
SELECT md5(string_agg(x, ';' ORDER BY x)) FROM (
  SELECT relname || ':' || relkind::text AS x FROM pg_class
   WHERE relnamespace = 'public'::regnamespace
  UNION ALL
  SELECT c.relname || '.' || a.attname || ':' || format_type(a.atttypid, a.atttypmod)
         || ':' || a.attnotnull || ':' || a.attgenerated::text || ':' || a.attidentity::text
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
   WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT conname || ':' || pg_get_constraintdef(oid) FROM pg_constraint
   WHERE connamespace = 'public'::regnamespace
  UNION ALL
  SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
   WHERE c.relnamespace = 'public'::regnamespace
  UNION ALL
  SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
   WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal
  UNION ALL
  SELECT proname || '(' || pg_get_function_identity_arguments(oid) || ')' FROM pg_proc
   WHERE pronamespace = 'public'::regnamespace
) parts
"""


class _Template(NamedTuple):
    """A migrated database to clone, and what it held right after its
    migration: each table's rows (COPY's text), each sequence's state, and
    its structure's fingerprint (``_SHAPE``)."""

    name: str
    rows: dict[str, bytes]
    sequences: dict[str, tuple[int, bool]]
    shape: str


def _database_url(name: str) -> str:
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def _drop_databases_of_gone_processes(admin: Engine) -> None:
    """Databases pg_migrated left behind in a process that was killed."""
    with admin.connect() as conn:
        names = conn.execute(
            text("SELECT datname FROM pg_database WHERE datname LIKE 'gp\\_%\\_%'")
        ).scalars()
        for name in list(names):
            pid = name.split("_")[1]
            if not pid.isdigit() or Path(f"/proc/{pid}").exists():
                continue
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _read_template(name: str) -> _Template:
    engine = create_engine(_database_url(name), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            with raw.cursor() as cur:
                cur.execute(
                    "SELECT relname, relkind FROM pg_class WHERE relnamespace = "
                    "'public'::regnamespace AND relkind IN ('r', 'S') ORDER BY relname"
                )
                relations = cur.fetchall()
                rows, sequences = {}, {}
                for relation, kind in relations:
                    if kind == "S":
                        cur.execute(f'SELECT last_value, is_called FROM "{relation}"')
                        sequences[relation] = cur.fetchone()
                        continue
                    with cur.copy(f'COPY "{relation}" TO STDOUT') as copy:
                        rows[relation] = b"".join(bytes(block) for block in copy)
                cur.execute(_SHAPE)
                (shape,) = cur.fetchone()
        return _Template(name, rows, sequences, shape)
    finally:
        engine.dispose()


def _template(admin: Engine) -> _Template:
    if not _pg_template:
        _drop_databases_of_gone_processes(admin)
        name = f"gp_{os.getpid()}_template"
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine = make_engine(_database_url(name))
        try:
            migrate(engine)
        finally:
            engine.dispose()
        template = _read_template(name)
        with admin.connect() as conn:
            # A template is cloned only while nothing is connected to it:
            # closed to connections, not even autovacuum's visit it.
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
        _pg_template.append(template)
        atexit.register(_drop_databases, [name], _pg_free)
    return _pg_template[0]


def _drop_databases(*lists: list[str]) -> None:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for name in (n for names in lists for n in names):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _reset(admin: Engine, name: str, template: _Template) -> bool:
    """Put ``name`` back as ``template`` left it, content and sequences;
    False when that cannot be done (its structure changed, or a connection
    to it would not end), and it is to be dropped instead.

    DELETE rather than TRUNCATE: TRUNCATE gives every table and index a new
    file, the churn that makes a clone of the template (every file of it,
    the system catalogs' included) dear on a file system among many
    recently deleted files."""
    with admin.connect() as conn:
        others = text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = :name AND pid <> pg_backend_pid()"
        )
        deadline = time.monotonic() + 5
        while conn.execute(others, {"name": name}).scalar_one():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
    engine = create_engine(_database_url(name), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            with raw.transaction(), raw.cursor() as cur:
                cur.execute(_SHAPE)
                row = cur.fetchone()
                if row is None or row[0] != template.shape:
                    return False
                # Neither triggers nor foreign keys while the content is put back.
                cur.execute("SET LOCAL session_replication_role = replica")
                for table, data in template.rows.items():
                    cur.execute(f'DELETE FROM "{table}"')
                    if data:
                        with cur.copy(f'COPY "{table}" FROM STDIN') as copy:
                            copy.write(data)
                for sequence, (value, called) in template.sequences.items():
                    cur.execute("SELECT setval(%s, %s, %s)", (f'"{sequence}"', value, called))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def sqlite_from_template(url: str) -> None:
    """Give the SQLite store of ``url``, when its file does not exist yet,
    the content of one this process migrated once (``seeded_sqlite``'s): a
    server migrating a new file spends about 0.3 s of CPU on it, at every
    start (as ``pg_migrated`` does for PostgreSQL). Other URLs and existing
    files are left alone."""
    if not url.startswith("sqlite:///"):
        return
    path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    copy = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    copy.write_bytes(_store_content(()))
    try:
        # A link creates the name only where no other process made it meanwhile.
        os.link(copy, path)
    except FileExistsError:
        pass
    finally:
        copy.unlink()


@contextmanager
def pg_migrated() -> Iterator[str]:
    """A fresh PostgreSQL store at the newest revision; yields its URL and
    takes it back afterwards. The first ones are cloned from a template
    this process migrated once (CREATE DATABASE ... TEMPLATE), where a
    schema of its own costs a migration each; one taken back is reset to
    the template's content and handed out again (``_reset``), or dropped
    when the test changed its structure. For tests of what is stored, not
    of the migrations."""
    admin = _pg_admin()
    try:
        template = _template(admin)
        if _pg_free:
            name = _pg_free.pop()
        else:
            name = f"gp_{os.getpid()}_{uuid.uuid4().hex[:10]}"
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template.name}"'))
        try:
            yield _database_url(name)
        finally:
            if _reset(admin, name, template):
                _pg_free.append(name)
            else:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    """Run ``fn``, which must fail with a grpc error, and return that error."""
    try:
        fn()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded but was expected to fail")


def details(err: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, list[tuple[str, str]]]:
    """ErrorInfo and the (field, reason) pairs of BadRequest from a failed call."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {err}"
    info = error_details_pb2.ErrorInfo()
    violations: list[tuple[str, str]] = []
    found_info = False
    for any_msg in status.details:
        if any_msg.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            any_msg.Unpack(info)
            found_info = True
        elif any_msg.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            any_msg.Unpack(br)
            violations = [(v.field, v.reason) for v in br.field_violations]
    assert found_info, "ErrorInfo missing"
    assert info.domain == "geopunch.v1"
    return info, violations


def trailing(err: grpc.RpcError) -> list[tuple[str, str | bytes]]:
    """A failed call's trailing metadata as (key, value) pairs: grpc gives
    tuples where its type stubs promise objects with attributes."""
    call: Any = err
    return [(k, v) for k, v in call.trailing_metadata() or ()]


def expect_error(
    fn: Callable[[], Any], code: grpc.StatusCode, reason: str
) -> tuple[grpc.RpcError, list[tuple[str, str]]]:
    err = rpc_error(fn)
    assert err.code() == code, (err.code(), err.details())
    info, violations = details(err)
    assert info.reason == reason, (info.reason, err.details())
    return err, violations


class AccountStore:
    """Units of work on ``engine`` that see ``account`` unless told another:
    the repository tests work in one account, as most callers do."""

    def __init__(self, engine: Engine, account: int = DEFAULT_ACCOUNT, **kwargs: Any) -> None:
        self.factory = SqlUnitOfWorkFactory(engine, **kwargs)
        self.engine = engine
        self.account = account

    def __call__(self, *, account: int | None = None, readonly: bool = False) -> SqlUnitOfWork:
        return self.factory(account=self.account if account is None else account, readonly=readonly)


class SetClock:
    """A clock that reads ``t`` until a test moves it."""

    def __init__(self, t: float = 1_900_000_000) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


_STORE_TEMPLATES: dict[tuple[object, ...], bytes] = {}


def seeded_sqlite(path: Path, clocks: Sequence[TimeClock]) -> Engine:
    """A SQLite store at ``path``, migrated and holding ``clocks``: a copy of
    one built once per set of clocks (migrating afresh for every example of
    a property test cost most of its time)."""
    path.write_bytes(_store_content(tuple(clocks)))
    return make_engine(f"sqlite:///{path}")


def _store_content(clocks: tuple[TimeClock, ...]) -> bytes:
    """The file of a SQLite store migrated and holding ``clocks``, built once
    per set of clocks in this process."""
    if clocks not in _STORE_TEMPLATES:
        with TemporaryDirectory() as tmp:
            template = Path(tmp) / "template.db"
            engine = make_engine(f"sqlite:///{template}")
            migrate(engine)
            with AccountStore(engine)() as uow:
                for tc in clocks:
                    uow.time_clocks.add(tc)
                uow.commit()
            engine.dispose()
            # The last connection's close folded the write-ahead log into the file.
            assert not template.with_name("template.db-wal").exists()
            _STORE_TEMPLATES[clocks] = template.read_bytes()
    return _STORE_TEMPLATES[clocks]


class RunningDeliverer:
    """A webhook deliverer on an event loop of its own thread, as in a server
    process: ``stop`` as SIGTERM would, ``die`` as SIGKILL would."""

    def __init__(
        self,
        uows: SqlUnitOfWorkFactory,
        signal: Wakeup,
        settings: DeliverySettings,
        *,
        owner: str | None = None,
        changes: Wakeup | None = None,
        poster: WebhookPoster | None = None,
    ) -> None:
        self.stopping = Stop()
        self.loop = asyncio.new_event_loop()
        self.deliverer = Deliverer(
            uows,
            poster or HttpPoster(5.0, True, "test"),
            signal,
            self.stopping,
            settings,
            owner=owner,
            changes=changes,
        )
        self.dead = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # die() stops the loop with the coroutine unfinished: RuntimeError
        with contextlib.suppress(RuntimeError):
            self.loop.run_until_complete(self.deliverer.run())

    def stop(self) -> None:
        """A clean stop: progress stored, leases given back."""
        self.stopping.set()
        self.thread.join(30)
        self.loop.close()

    def die(self) -> None:
        """Stop dead, as a SIGKILL would: nothing stored, nothing given back."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.dead = True

    def close(self) -> None:
        """After the checks: end what a dead one left (its sockets) or stop it."""
        if not self.dead:
            self.stop()
            return
        self.stopping.set()
        # Cancelled tasks may start more (a handed-over task's last save):
        # until none is left.
        for _ in range(10):
            pending = asyncio.all_tasks(self.loop)
            if not pending:
                break
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()


def pipelined_gets(
    http_address: str, seconds: float, meanwhile: Callable[[], None] = lambda: None
) -> int:
    """Send ``GET /healthz`` back to back on one connection (HTTP/1.1
    pipelining, no key) for ``seconds`` while a thread reads the answers,
    calling ``meanwhile`` between sends; return how many were answered."""
    host, _, port = http_address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=0.5) as sock:
        answered, until = [0], time.monotonic() + seconds

        def read_answers() -> None:
            while time.monotonic() < until:
                with contextlib.suppress(TimeoutError):
                    answered[0] += sock.recv(1 << 20).count(b"HTTP/1.1 200 ")

        reader = threading.Thread(target=read_answers)
        reader.start()
        blob = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 30_000
        while time.monotonic() < until:
            with contextlib.suppress(TimeoutError):
                sock.send(blob)
            meanwhile()
        reader.join()
    return answered[0]


def refused_raw(answer: bytes, status: int, code: str) -> None:
    """``answer`` (a whole HTTP answer, read off a socket) refuses with
    ``status`` and the API's error body carrying ``code``, its request id
    the one in the head."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    found = json.loads(body)
    assert found["code"] == code and found["detail"], found
    assert f"x-request-id: {found['requestId']}".encode() in head


class AnswersMatchDocument:
    """An httpx response hook: every answer of the HTTP API must be one its
    served OpenAPI document describes (a documented status, content type
    and JSON shape), so that the document's answer shapes, which the routes
    never go through, cannot drift from what the routes send."""

    def __init__(self, base_url: str) -> None:
        import schemathesis  # a second's import, for the tests that talk HTTP

        self.schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
        self.checked: Counter[str] = Counter()

    def __call__(self, response: httpx.Response) -> None:
        request = response.request
        if request.method == "HEAD" or "text/event-stream" in response.headers.get(
            "content-type", ""
        ):
            return  # no body to read, or one without end
        operation = self.schema.find_operation_by_path(request.method, request.url.path)
        if operation is None:  # /metrics, /openapi.json, a path not served
            return
        response.read()
        operation.validate_response(response)
        self.checked[f"{operation.label} {response.status_code}"] += 1


def scrape(http_address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by name and sorted labels."""
    r = httpx.get(f"http://{http_address}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
