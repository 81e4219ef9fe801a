"""Server behaviour: auth, health, reflection, request ids, shutdown, durability."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import psutil
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from geopunch.v1 import admin_pb2, geofences_pb2, location_pb2
from tests.conftest import API_KEY, Client, ServerProcess, make_time_clock, next_time_clock_id
from tests.helpers import details, expect_error


def list_req(tc_id: int = 1) -> geofences_pb2.ListGeofencesRequest:
    return geofences_pb2.ListGeofencesRequest(time_clock_id=tc_id)


@pytest.mark.parametrize("key", [None, "wrong-key-123456", API_KEY + "x", ""])
def test_calls_without_a_valid_key_are_unauthenticated(
    server: ServerProcess, key: str | None
) -> None:
    c = Client(server.address, api_key=key)
    try:
        expect_error(
            lambda: c(c.geofences.ListGeofences, list_req()),
            grpc.StatusCode.UNAUTHENTICATED,
            "API_KEY_INVALID",
        )
    finally:
        c.close()


@pytest.mark.parametrize("name", ["x-api-key", "x-request-id"])
def test_metadata_of_one_value_sent_twice_is_refused(client: Client, name: str) -> None:
    """Which copy would count was up to each reader: two keys, even two
    valid ones, were refused as no key at all, and of two request ids the
    first was taken. As over HTTP, such a call is refused before its key is
    checked, and the answer says why."""
    tc = make_time_clock(client)
    second = (name, API_KEY if name == "x-api-key" else "rid-2")
    err, _ = expect_error(
        lambda: client.geofences.ListGeofences(
            list_req(tc.id), metadata=(*client.metadata, ("x-request-id", "rid-1"), second)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert err.details() == f"'{name}' metadata is sent more than once; send it once"
    # Once each, the same call is answered.
    assert client(client.geofences.ListGeofences, list_req(tc.id)).request_id


class Systemd:
    """The end of NOTIFY_SOCKET that systemd holds: what a service tells it."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}

    def heard(self, within_s: float) -> list[str]:
        """Every message that arrives within ``within_s`` seconds."""
        got: list[str] = []
        deadline = time.monotonic() + within_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("processes", ["1", "2"])
def test_systemd_hears_ready_the_watchdog_and_stopping(tmp_path: Path, processes: str) -> None:
    """Under systemd (Type=notify, WatchdogSec=), the service says READY=1
    once it serves, WATCHDOG=1 at least twice per watchdog period while its
    event loop (or, with --processes, its supervisor's loop) runs, none
    while it is stopped, and STOPPING=1 at a stop. Workers never speak:
    READY=1 comes once."""
    systemd = Systemd(tmp_path / "notify")
    srv = ServerProcess(
        db_url=f"sqlite:///{tmp_path / 'sd.db'}",
        env_extra={**systemd.env, "GEOPUNCH_PROCESSES": processes},
    )
    try:
        srv.start(tmp_path)
        heard = systemd.heard(1.5)
        assert heard[0] == "READY=1", heard
        assert heard.count("READY=1") == 1 and heard.count("WATCHDOG=1") >= 5, heard
        assert set(heard) == {"READY=1", "WATCHDOG=1"}, heard
        assert srv.proc is not None
        # The variables were the service's alone: no worker inherited them.
        for child in psutil.Process(srv.proc.pid).children(recursive=True):
            assert "NOTIFY_SOCKET" not in child.environ(), child.cmdline()
        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            systemd.heard(0.3)  # what was under way
            assert systemd.heard(0.8) == []
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        assert "WATCHDOG=1" in systemd.heard(1)
        assert srv.terminate() == 0
        assert "STOPPING=1" in systemd.heard(1)
    finally:
        systemd.close()
        if srv.proc is not None and srv.proc.poll() is None:
            srv.terminate()


def test_every_configured_key_works(server: ServerProcess) -> None:
    c = Client(server.address, api_key="second-key-abcdef")
    try:
        tc = make_time_clock(c)
        assert c(c.geofences.ListGeofences, list_req(tc.id)).request_id
    finally:
        c.close()


def test_health_and_reflection_need_no_key(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "geopunch.v1.GeofenceService", "geopunch.v1.AdminService"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(
            refl.ServerReflectionInfo(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(list_services=""),
                        reflection_pb2.ServerReflectionRequest(
                            file_containing_symbol="geopunch.v1.GeofenceService"
                        ),
                    ]
                ),
                timeout=5,
            )
        )
        names = {s.name for s in answers[0].list_services_response.service}
        assert {
            "geopunch.v1.GeofenceService",
            "geopunch.v1.AdminService",
            "grpc.health.v1.Health",
        } <= names
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in answers[1].file_descriptor_response.file_descriptor_proto
        ]
        assert "geopunch/v1/geofences.proto" in {f.name for f in files}


def test_a_method_no_service_has_is_told_the_method_it_likely_meant(
    server: ServerProcess,
) -> None:
    """grpc's own answer to an unknown method was a bare UNIMPLEMENTED
    ("Method not found!"): a client built from an old or misspelled name
    learnt nothing. The answer names the method the call likely meant, with
    HTTP's reason for a path no route serves, key or no key (method names
    are public: reflection lists them), whichever kind of call it is."""
    ti = "/geopunch.v1.TimeClockService"
    cases = [
        (f"{ti}/Clockin", f"{ti}/ClockIn"),  # case
        (f"{ti}/clock_out", f"{ti}/ClockOut"),  # underscores
        (f"{ti}/ClockIns", f"{ti}/ClockIn"),  # a close spelling
        ("/timeclock.TimeClockService/ClockIn", f"{ti}/ClockIn"),  # another package
        ("/geopunch.v1.AdminService/ClockIn", f"{ti}/ClockIn"),  # another service
        (
            "/geopunch.v1.GeofenceService/CheckLocation",
            "/geopunch.v1.LocationService/CheckLocations",
        ),
        ("/grpc.health.v1.Health/check", "/grpc.health.v1.Health/Check"),
        ("/nothing.Like/Anything", None),
        ("/" + "x" * 5000, None),
    ]
    with grpc.insecure_channel(server.address) as channel:
        for method, hint in cases:
            for call, metadata in (
                (channel.unary_unary(method, None, None), (("x-api-key", API_KEY),)),
                (channel.unary_stream(method, None, None), ()),
            ):
                with pytest.raises(grpc.RpcError) as caught:
                    result = call(b"", metadata=metadata, timeout=10)
                    if not isinstance(result, bytes):
                        list(result)
                err = caught.value
                assert err.code() == grpc.StatusCode.UNIMPLEMENTED, (method, err.details())
                info, _ = details(err)
                assert info.reason == "ROUTE_NOT_FOUND", (method, err.details())
                said = err.details() or ""
                if hint is None:
                    assert said.endswith("; server reflection lists them"), said
                    assert len(said) < 300, said
                else:
                    assert said == f"no method {method}; did you mean {hint}?", said
    # The server answers as before.
    c = Client(server.address)
    try:
        c(c.admin.Ping, admin_pb2.PingRequest())
    finally:
        c.close()


def test_request_id_in_response_metadata_and_log(server: ServerProcess, client: Client) -> None:
    tc = make_time_clock(client)
    resp, call = client.geofences.ListGeofences.with_call(list_req(tc.id), metadata=client.metadata)
    sent = dict(call.initial_metadata())["x-request-id"]
    assert resp.request_id == sent
    entry = access_log_line(server, sent)
    assert entry["method"] == "/geopunch.v1.GeofenceService/ListGeofences"
    assert entry["code"] == "OK"


def access_log_line(server: ServerProcess, request_id: str) -> dict[str, Any]:
    """The server's access log line for the call ``request_id``, waiting up to 5 s."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        entries = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
        mine = [e for e in entries if e.get("request_id") == request_id and e.get("msg") == "rpc"]
        if mine:
            return dict(mine[0])
        time.sleep(0.05)
    raise AssertionError(f"no access log line for request {request_id}")


def _tc_with_fences(client: Client, n: int) -> tuple[int, list[str]]:
    tc = make_time_clock(client)
    req = geofences_pb2.CreateGeofencesRequest(time_clock_id=tc.id)
    for i in range(n):
        g = req.geofences.add(name=f"g{i}", fence_size=100)
        g.location.address = "somewhere"
        g.location.latitude = 10 + i * 1e-3
        g.location.longitude = 20
    created = client(client.geofences.CreateGeofences, req)
    return tc.id, [g.fence_id for g in created.data.geofences]


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    srv = ServerProcess(db_url=f"sqlite:///{tmp_path / 'kill.db'}")
    srv.start(tmp_path)
    c = Client(srv.address)
    acknowledged = [_tc_with_fences(c, 50) for _ in range(5)]
    c.close()
    srv.kill()
    assert srv.proc is not None and srv.proc.returncode == -signal.SIGKILL
    srv.start(tmp_path)
    c = Client(srv.address)
    try:
        for tc_id, ids in acknowledged:
            listed = c(c.geofences.ListGeofences, list_req(tc_id))
            assert [g.id for g in listed.data.geofences] == ids
    finally:
        c.close()
        srv.terminate()


def test_sigterm_lets_in_flight_calls_finish(tmp_path: Path) -> None:
    srv = ServerProcess(db_url=f"sqlite:///{tmp_path / 'term.db'}")
    srv.start(tmp_path)
    c = Client(srv.address)
    tc = make_time_clock(c)
    big = geofences_pb2.CreateGeofencesRequest(time_clock_id=tc.id)
    for i in range(1000):
        g = big.geofences.add(name=f"g{i}")
        g.location.address = "a"
        g.location.latitude = 1
        g.location.longitude = 2

    def call() -> tuple[str, int]:
        try:
            resp = c(c.geofences.CreateGeofences, big)
            return "OK", len(resp.data.geofences)
        except grpc.RpcError as exc:
            return exc.code().name, 0

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(call) for _ in range(16)]
        time.sleep(0.15)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        results = [f.result() for f in futures]
    assert srv.proc.wait(30) == 0
    c.close()
    # A call the server had not yet accepted when the listener closed may be
    # refused (UNAVAILABLE, or CANCELLED when its request was still on the wire);
    # every call a handler started must have completed OK.
    codes = {code for code, _ in results}
    assert codes <= {"OK", "UNAVAILABLE", "CANCELLED"}, results
    ok = sum(1 for code, _ in results if code == "OK")
    assert ok >= 1
    entries = [json.loads(x) for x in srv.logs().splitlines() if x.startswith("{")]
    handled = [e for e in entries if e.get("method", "").endswith("/CreateGeofences")]
    assert [e["code"] for e in handled] == ["OK"] * ok
    assert entries[-1]["msg"] == "stopped"
    srv.start(tmp_path)
    c = Client(srv.address)
    try:
        listed = c(c.geofences.ListGeofences, list_req(tc.id))
        assert len(listed.data.geofences) == 1000 * ok
    finally:
        c.close()
        srv.terminate()


def test_bad_configuration_exits_with_a_message(tmp_path: Path) -> None:
    srv = ServerProcess(
        db_url=f"sqlite:///{tmp_path / 'x.db'}", env_extra={"GEOPUNCH_API_KEYS": "short"}
    )
    with pytest.raises(RuntimeError, match="server did not start"):
        srv.start(tmp_path, timeout=10)
    assert "at least 8 characters" in srv.logs()


def test_an_address_in_use_exits_with_a_message(tmp_path: Path) -> None:
    """gRPC's, HTTP's or the metrics' address taken: one line naming it and
    exit code 2 (a traceback before), one process or several."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = f"127.0.0.1:{taken.getsockname()[1]}"
    env = {
        **os.environ,
        "GEOPUNCH_API_KEYS": API_KEY,
        "GEOPUNCH_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
    }
    free = ["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
    cases = (
        ("gRPC", ["--listen", busy, "--http-listen", "127.0.0.1:0"]),
        ("HTTP", ["--listen", "127.0.0.1:0", "--http-listen", busy]),
        ("metrics", [*free, "--metrics-listen", busy]),
        ("gRPC", ["--listen", busy, "--http-listen", "127.0.0.1:0", "--processes", "2"]),
    )

    def serve(args: list[str]) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "geopunch", "serve", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    try:
        with ThreadPoolExecutor(len(cases)) as pool:
            runs = list(pool.map(serve, [args for _, args in cases]))
        for (what, args), done in zip(cases, runs, strict=True):
            assert done.returncode == 2, (args, done.stderr[-2000:])
            assert "Traceback" not in done.stderr, done.stderr[-2000:]
            assert "geopunch: cannot listen" in done.stderr and busy in done.stderr, done.stderr
            if "--processes" not in args:
                assert f"cannot listen for {what} on {busy}" in done.stderr, done.stderr
    finally:
        taken.close()


def test_unknown_ids_do_not_clash(client: Client) -> None:
    assert next_time_clock_id() != next_time_clock_id()
    # An id no test has used: the server is shared with the other test files
    # on this worker, and fuzzers among them may create small ids such as 1.
    unknown = next_time_clock_id()
    expect_error(
        lambda: client(
            client.admin.GetTimeClock, admin_pb2.GetTimeClockRequest(time_clock_id=unknown)
        ),
        grpc.StatusCode.NOT_FOUND,
        "TIME_CLOCK_NOT_FOUND",
    )


def test_sigterm_ends_open_event_streams_promptly(tmp_path: Path) -> None:
    srv = ServerProcess(db_url=f"sqlite:///{tmp_path / 'stream.db'}")
    srv.start(tmp_path)
    c = Client(srv.address)
    ended: list[str] = []

    def listen() -> None:
        stream = c.locations.WatchEvents(
            location_pb2.WatchEventsRequest(), metadata=c.metadata, timeout=60
        )
        try:
            for _ in stream:
                pass
            ended.append("closed by the server")
        except grpc.RpcError as exc:
            info, _ = details(exc)
            ended.append(f"{exc.code().name} {info.metadata['afterSeq']}")

    listeners = [threading.Thread(target=listen) for _ in range(3)]
    for t in listeners:
        t.start()
    time.sleep(1.0)  # the streams are waiting at the end of an empty log
    assert srv.proc is not None
    started = time.perf_counter()
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(30) == 0
    assert time.perf_counter() - started < 5  # well within the 10 s grace
    for t in listeners:
        t.join(10)
    c.close()
    # Not a finished stream but a stopped server: clients reconnect from their cursor.
    assert ended == ["UNAVAILABLE 0"] * 3


def test_sigusr1_writes_every_stack_and_keeps_serving(
    server: ServerProcess, client: Client
) -> None:
    assert server.proc is not None
    before = len(server.logs())
    server.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    # faulthandler writes thread by thread: wait for the main thread's stack,
    # not the first mention of a server module.
    while "in serve" not in server.logs()[before:] and time.monotonic() < deadline:
        time.sleep(0.05)
    dump = server.logs()[before:]
    assert "Thread 0x" in dump and "in serve" in dump  # the main thread, waiting to stop
    make_time_clock(client)  # still answering


def test_a_cancelled_event_stream_ends_on_the_server(server: ServerProcess, client: Client) -> None:
    """The stream's handler notices the client leaving and finishes (its access
    log line says CANCELLED), instead of keeping a server thread waiting."""
    stream = client.locations.WatchEvents(
        location_pb2.WatchEventsRequest(), metadata=client.metadata, timeout=60
    )
    sent = dict(stream.initial_metadata())["x-request-id"]
    assert isinstance(sent, str)
    stream.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs
    entry = access_log_line(server, sent)
    assert entry["method"] == "/geopunch.v1.LocationService/WatchEvents"
    assert entry["code"] == "CANCELLED"


def test_event_streams_beyond_a_keys_cap_are_refused_and_hold_no_unary_slot(
    tmp_path: Path,
) -> None:
    """With GEOPUNCH_MAX_WORKERS=1 (8 unary calls at once) and 2 streams per
    key: 8 open streams of 4 keys leave unary calls served, a key's third
    stream is refused as RESOURCE_EXHAUSTED, and a cancelled stream frees
    its place. Streams over HTTP count with those over gRPC."""
    srv = ServerProcess(
        db_url=f"sqlite:///{tmp_path / 'cap.db'}",
        env_extra={
            "GEOPUNCH_MAX_WORKERS": "1",
            "GEOPUNCH_MAX_STREAMS_PER_KEY": "2",
            "GEOPUNCH_API_KEYS": ",".join(f"stream-key-{i}" for i in range(4)),
        },
    )
    srv.start(tmp_path)
    c = Client(srv.address)

    def watch(key: int) -> Any:
        return c.locations.WatchEvents(
            location_pb2.WatchEventsRequest(),
            metadata=(("x-api-key", f"stream-key-{key}"),),
            timeout=60,
        )

    def a_new_stream_runs(key: int, otherwise: str) -> None:
        """A new stream of ``key`` soon runs: a place it held was given back
        (a stream ended on the client ends on the server a moment later)."""
        deadline = time.monotonic() + 10
        while True:
            again = watch(key)
            again.initial_metadata()
            time.sleep(0.2)
            if not again.done():
                again.cancel()
                return
            assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() < deadline, otherwise

    try:
        streams = [watch(k) for k in (0, 0, 1, 1, 2, 2, 3, 3)]
        for s in streams:
            s.initial_metadata()  # each one is running on the server
        auth = (("x-api-key", "stream-key-0"),)
        c.admin.Ping(admin_pb2.PingRequest(), metadata=auth, timeout=5)
        third = watch(0)
        with pytest.raises(grpc.RpcError) as exc:
            next(third)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details(exc.value)[0].reason == "TOO_MANY_STREAMS"
        streams[0].cancel()
        a_new_stream_runs(0, "the cancelled stream never ended")
        # Streams of Server-Sent Events count with them: key 3 holds two
        # over gRPC, so its first one over HTTP is refused.
        base = f"http://{srv.http_address}/geopunch/v1/events"
        refused = httpx.get(base, headers={"X-API-KEY": "stream-key-3"}, timeout=10)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "TOO_MANY_STREAMS"
        # Key 2 gives its gRPC streams back and takes two over HTTP; its next
        # gRPC stream is refused until one of them is closed.
        streams[4].cancel()
        streams[5].cancel()
        with contextlib.ExitStack() as held:
            deadline = time.monotonic() + 10
            opened: list[httpx.Response] = []
            while len(opened) < 2:
                r = held.enter_context(
                    httpx.stream("GET", base, headers={"X-API-KEY": "stream-key-2"}, timeout=10)
                )
                if r.status_code == 200:
                    opened.append(r)
                else:  # the cancelled gRPC streams are still ending
                    assert r.status_code == 429 and time.monotonic() < deadline, r.read()
                    time.sleep(0.1)
            with pytest.raises(grpc.RpcError) as exc:
                next(watch(2))
            assert details(exc.value)[0].reason == "TOO_MANY_STREAMS"
            opened[0].close()
            a_new_stream_runs(2, "the closed stream kept its place")
        for s in streams[1:]:
            s.cancel()
    finally:
        c.close()
        srv.terminate()


def _index_source(srv: ServerProcess) -> str:
    """Where the server's fence index came from at its last start."""
    assert srv.log_path is not None
    ready = [
        json.loads(line)
        for line in srv.log_path.read_text().splitlines()
        if '"fence index ready"' in line
    ]
    return str(ready[-1]["from"])


def _inside(c: Client, tc_id: int, lats: list[float]) -> list[tuple[bool, list[str]]]:
    """Per point: inside, and the ids of the fences it is in."""
    points = location_pb2.PackedPoints(latitudes=lats, longitudes=[20.0] * len(lats))
    req = location_pb2.CheckLocationsRequest(time_clock_id=tc_id, packed=points)
    data = c(c.locations.CheckLocations, req).data
    inside = np.frombuffer(data.inside_u8, np.uint8).tolist()
    offsets = np.frombuffer(data.match_offsets_i64, "<i8").tolist()
    fences = np.frombuffer(data.match_fences_i32, "<i4").tolist()
    return [
        (bool(inside[i]), sorted(data.fence_ids[j] for j in fences[offsets[i] : offsets[i + 1]]))
        for i in range(len(lats))
    ]


def test_a_restart_reads_the_index_checkpoint_and_replays_what_a_kill_left_out(
    tmp_path: Path,
) -> None:
    """SIGTERM saves the fence index beside the SQLite file; the next start
    reads it. Changes acknowledged after it (the process then SIGKILLed, so
    nothing is saved) come back from the change feed."""
    db = tmp_path / "saved.db"
    srv = ServerProcess(db_url=f"sqlite:///{db}")
    srv.start(tmp_path)
    c = Client(srv.address)
    first, _ = _tc_with_fences(c, 30)
    probes = [10 + i * 1e-3 for i in range(0, 40, 3)]
    before = _inside(c, first, probes)
    c.close()
    # It started without fences: nothing was worth saving then (the next
    # save is the hourly one, or the stop's).
    assert not (tmp_path / "saved.db.fence-index").exists()
    srv.terminate()
    assert (tmp_path / "saved.db.fence-index").stat().st_size > 0
    assert _index_source(srv) == "rows"

    srv.start(tmp_path)
    assert _index_source(srv) == "checkpoint"
    c = Client(srv.address)
    assert _inside(c, first, probes) == before
    second, ids = _tc_with_fences(c, 10)  # after the checkpoint
    c.close()
    srv.kill()

    srv.start(tmp_path)
    c = Client(srv.address)
    try:
        assert _index_source(srv) == "checkpoint"
        assert _inside(c, first, probes) == before
        assert [i for i, _ in _inside(c, second, [10.0, 10.005, 11.0])] == [True, True, False]
        listed = c(c.geofences.ListGeofences, list_req(second))
        assert [g.id for g in listed.data.geofences] == ids
    finally:
        c.close()
        srv.terminate()
    # Saved once, after the replay; the stop finds nothing new to save.
    assert srv.log_path is not None
    assert srv.log_path.read_text().count('"fence index checkpoint written"') == 1


def test_a_supervisor_loads_none_of_the_servers_modules(tmp_path: Path) -> None:
    """With --processes the workers import the server (numba's LLVM, grpc,
    SQLAlchemy's and FastAPI's models) in their fork server; the supervisor
    only watches them. It imported the server too, for nothing: some 170 MB
    more RSS, and its start-up before the fork server's own. Started as a
    user starts it: a fork of the tests' warm interpreter has them loaded."""
    srv = ServerProcess(
        db_url=f"sqlite:///{tmp_path / 'lean.db'}",
        env_extra={"GEOPUNCH_PROCESSES": "2"},
        fresh_interpreter=True,
    )
    srv.start(tmp_path)
    try:
        assert srv.proc is not None
        supervisor = psutil.Process(srv.proc.pid)

        def libraries(p: psutil.Process) -> set[str]:
            found = {m.path for m in p.memory_maps()}
            return {name for name in ("llvmlite", "cygrpc") if any(name in f for f in found)}

        workers = [
            c for c in supervisor.children(recursive=True) if "worker" in " ".join(c.cmdline())
        ]
        assert len(workers) == 2
        assert all(libraries(w) == {"llvmlite", "cygrpc"} for w in workers)
        assert libraries(supervisor) == set()
    finally:
        assert srv.terminate() == 0
