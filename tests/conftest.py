"""Shared fixtures: a real server process, stubs with the API key, a clean store."""

from __future__ import annotations

import gc
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from geopunch.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    geofences_pb2_grpc,
    location_pb2_grpc,
    scheduler_pb2_grpc,
    timeclock_pb2_grpc,
    webhooks_pb2_grpc,
)
from tests.forked_server import ForkedProcess
from tests.helpers import AnswersMatchDocument, pg_migrated, sqlite_from_template

# The NATS stream fixture, for the event sink's tests and the store's faults.
pytest_plugins = ["tests.nats_stream"]


def pytest_collection_finish(session: pytest.Session) -> None:
    """What the imports and the collection made lives for the whole run:
    frozen out of the collector, the collections the tests set off walk
    only what the tests make."""
    gc.collect()
    gc.freeze()


API_KEY = "test-key-0123456789"
_ids = itertools.count(1000)


def next_time_clock_id() -> int:
    """A time clock id no other test in this run uses."""
    return next(_ids) * 1000 + os.getpid() % 1000


@dataclass
class ServerProcess:
    """A ``python -m geopunch serve`` child process on a free port."""

    db_url: str
    env_extra: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | ForkedProcess | None = None
    address: str = ""
    #: host:port of its HTTP API (every test server has one, on a free port).
    http_address: str = ""
    log_path: Path | None = None
    #: Arguments after ``serve``.
    args: list[str] = field(default_factory=list)
    #: For a server with TLS: what its health is checked with.
    credentials: grpc.ChannelCredentials | None = None
    #: Start it with ``python -m geopunch`` rather than as a fork of the warm
    #: interpreter (``tests.forked_server``): for tests that look at the
    #: process's own command line or environment.
    fresh_interpreter: bool = False
    #: Where its stderr goes instead of a log file (``logs()`` is then empty).
    stderr_fd: int | None = None
    #: A SQLite store that does not exist yet starts as a copy of one migrated
    #: once (``sqlite_from_template``); False leaves the server to make it.
    store_from_template: bool = True

    def start(self, log_dir: Path, timeout: float = 120.0) -> None:
        env = {
            **os.environ,
            "GEOPUNCH_API_KEYS": f"{API_KEY},second-key-abcdef",
            "GEOPUNCH_DATABASE_URL": self.db_url,
            "GEOPUNCH_LISTEN": "127.0.0.1:0",
            "GEOPUNCH_LOG_LEVEL": "INFO",
            "GEOPUNCH_HTTP_LISTEN": "127.0.0.1:0",
            # The tests' webhook receivers listen on loopback.
            "GEOPUNCH_WEBHOOK_ALLOW_PRIVATE": "1",
            **self.env_extra,
        }
        if self.store_from_template:
            sqlite_from_template(self.db_url)
        self.log_path = log_dir / f"server-{time.monotonic_ns()}.log"
        if self.stderr_fd is not None:
            self.log_path = None
            self.proc = ForkedProcess(["serve", *self.args], env, self.stderr_fd)
        elif not self.fresh_interpreter:
            log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                self.proc = ForkedProcess(["serve", *self.args], env, log_fd)
            finally:
                os.close(log_fd)
        else:
            with self.log_path.open("w") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "geopunch", "serve", *self.args],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    env=env,
                )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if not line.startswith("geopunch serving on "):
            self.proc.stdout.close()
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"server did not start: {line!r}\n{self.logs()}")
        self.address = line.split()[-1]
        if env["GEOPUNCH_HTTP_LISTEN"] != "off":  # printed in the same write
            self.http_address = self.proc.stdout.readline().split()[-1]
        self.proc.stdout.close()
        if self.credentials is None:
            channel = grpc.insecure_channel(self.address)
        else:
            channel = grpc.secure_channel(self.address, self.credentials)
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("server never became SERVING")
                time.sleep(0.05)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; a server that does not stop in time has its
        thread stacks dumped (SIGUSR1) into the failure, then is killed."""
        assert self.proc is not None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"server did not stop within {timeout} s; its log:\n{self.logs()[-20000:]}"
            ) from None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path else ""


class Client:
    """Generated stubs on one channel, sending the API key on every call."""

    def __init__(
        self,
        address: str,
        api_key: str | None = API_KEY,
        *,
        own_connection: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """``own_connection``: a TCP connection of its own (channels in one
        process share one by default), as a separate client would have.
        ``credentials``: TLS."""
        options = [
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        if own_connection:
            options.append(("grpc.use_local_subchannel_pool", 1))
        if credentials is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            self.channel = grpc.secure_channel(address, credentials, options=options)
        self.metadata = (("x-api-key", api_key),) if api_key else ()
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.geofences = geofences_pb2_grpc.GeofenceServiceStub(self.channel)
        self.locations = location_pb2_grpc.LocationServiceStub(self.channel)
        self.timeclock = timeclock_pb2_grpc.TimeClockServiceStub(self.channel)
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self.channel)
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(self.channel)

    def __call__(self, method: Any, request: Any, timeout: float = 30) -> Any:
        return method(request, metadata=self.metadata, timeout=timeout)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store for servers that share one: a SQLite file, given a
    migrated store's content as the first server starts
    (``sqlite_from_template``), then a PostgreSQL database of its own,
    already migrated (``pg_migrated``)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
        return
    with pg_migrated() as url:
        yield url


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("server")
    # Started as a user starts it: most tests of this process talk to it.
    srv = ServerProcess(
        db_url=f"sqlite:///{tmp / 'geopunch.db'}",
        fresh_interpreter=True,
        store_from_template=False,
    )
    srv.start(tmp)
    yield srv
    srv.terminate()


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> Iterator[Client]:
    c = Client(server.address)
    yield c
    c.close()


@pytest.fixture(scope="session")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    """The shared server's HTTP API, with the bootstrap key; every answer is
    checked against the served OpenAPI document."""
    base = f"http://{server.http_address}"
    with httpx.Client(
        base_url=base,
        headers={"X-API-KEY": API_KEY},
        timeout=30,
        event_hooks={"response": [AnswersMatchDocument(base)]},
    ) as c:
        yield c


def make_time_clock(client: Client, **fields: Any) -> admin_pb2.TimeClock:
    """Create a time clock with a fresh id and the spec's sample users and jobs."""
    tc = admin_pb2.TimeClock(
        id=next_time_clock_id(),
        name="Main clock",
        timezone="America/New_York",
        user_ids=[9170357, 9170358],
        jobs=[
            admin_pb2.Job(id="job-123", name="Front desk"),
            admin_pb2.Job(id="job-456", name="Warehouse"),
            admin_pb2.Job(
                id="job-construction-001",
                name="Construction",
                sub_jobs=[admin_pb2.Job(id="job-construction-001-a", name="Framing")],
            ),
        ],
    )
    for key, value in fields.items():
        if isinstance(value, list):
            del getattr(tc, key)[:]
            getattr(tc, key).extend(value)
        else:
            setattr(tc, key, value)
    made: admin_pb2.TimeClockResponse = client(
        client.admin.CreateTimeClock, admin_pb2.CreateTimeClockRequest(time_clock=tc)
    )
    return made.data


#: The job of the spec's shift examples, and the users they assign.
SPEC_JOB = "d4ad7232-576f-2ff6-c57d-8240f1089b00"
SPEC_USERS = (9170357, 9170358, 9170359)


def make_scheduler(client: Client, **fields: Any) -> admin_pb2.Scheduler:
    """Create a scheduler with a fresh id, the spec's sample users and job."""
    s = admin_pb2.Scheduler(
        id=next_time_clock_id(),
        name="Store schedule",
        timezone="America/New_York",
        user_ids=list(SPEC_USERS),
        jobs=[
            admin_pb2.Job(id=SPEC_JOB, name="Sales floor", color="#E91E63"),
            admin_pb2.Job(
                id="job-kitchen",
                name="Kitchen",
                sub_jobs=[admin_pb2.Job(id="job-kitchen-prep", name="Prep")],
            ),
        ],
    )
    for key, value in fields.items():
        if isinstance(value, list):
            del getattr(s, key)[:]
            getattr(s, key).extend(value)
        else:
            setattr(s, key, value)
    made: admin_pb2.SchedulerResponse = client(
        client.admin.CreateScheduler, admin_pb2.CreateSchedulerRequest(scheduler=s)
    )
    return made.data
