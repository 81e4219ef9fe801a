"""An unexpected error in any kind of handler is INTERNAL with a request id:
no stack trace or exception text reaches the caller, the log has it once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest

from geopunch.adapters.db.repositories import SqlActivityRepository, SqlGeofenceRepository
from geopunch.adapters.db.tracking import SqlEventRepository, SqlLocationRepository
from geopunch.config import Config, hash_key
from geopunch.entrypoints.server import Server
from geopunch.v1 import geofences_pb2, location_pb2, timeclock_pb2
from tests.conftest import API_KEY, Client, make_time_clock
from tests.helpers import details, trailing

SECRET = "secret-detail-of-a-failure"


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A server in this process, so that a test can make a repository fail."""
    db = tmp_path_factory.mktemp("internal") / "store.db"
    server = Server(
        Config(
            listen="127.0.0.1:0",
            database_url=f"sqlite:///{db}",
            api_key_hashes=(hash_key(API_KEY),),
            http_listen="127.0.0.1:0",
        )
    )
    server.start()
    client = Client(f"127.0.0.1:{server.port}")
    assert server.http is not None
    client.http_base = f"http://{server.http.address}"  # type: ignore[attr-defined]
    yield client
    client.close()
    server.stop()


def _fail(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(SECRET)


def _first_event(client: Client, request: location_pb2.WatchEventsRequest) -> Any:
    stream = client.locations.WatchEvents(request, metadata=client.metadata, timeout=10)
    return next(iter(stream))


KINDS: dict[str, tuple[type, str, Callable[[Client, int], Any]]] = {
    # handler on the thread pool
    "unary, thread pool": (
        SqlGeofenceRepository,
        "list_for",
        lambda c, tc: c(
            c.geofences.ListGeofences, geofences_pb2.ListGeofencesRequest(time_clock_id=tc)
        ),
    ),
    # coroutine handlers on the event loop, through the group committer
    "unary, coroutine": (
        SqlActivityRepository,
        "punch_state",
        lambda c, tc: c(
            c.timeclock.ClockIn, timeclock_pb2.ClockInRequest(time_clock_id=tc, user_id=9170357)
        ),
    ),
    "unary, coroutine (locations)": (
        SqlLocationRepository,
        "load",
        lambda c, tc: c(
            c.locations.ReportLocations,
            location_pb2.ReportLocationsRequest(
                samples=location_pb2.TrailSamples(
                    time_clock_id=tc,
                    user_ids=[9170357],
                    timestamps=[1_700_000_000],
                    latitudes=[1.0],
                    longitudes=[1.0],
                )
            ),
        ),
    ),
    # async server stream
    "stream": (
        SqlEventRepository,
        "after",
        lambda c, tc: _first_event(c, location_pb2.WatchEventsRequest(time_clock_ids=[tc])),
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_an_unexpected_error_is_internal_with_a_request_id(
    in_process: Client,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    repository, method, call = KINDS[kind]
    tc = make_time_clock(in_process).id
    monkeypatch.setattr(repository, method, _fail)
    caplog.set_level(logging.INFO)
    with pytest.raises(grpc.RpcError) as raised:
        call(in_process, tc)
    err = raised.value
    assert err.code() == grpc.StatusCode.INTERNAL, (err.code(), err.details())
    info, _ = details(err)
    assert info.reason == "INTERNAL"
    request_id = info.metadata["requestId"]
    assert request_id and request_id in (err.details() or "")
    initial = dict(err.initial_metadata())  # type: ignore[attr-defined]
    assert initial["x-request-id"] == request_id
    text = err.details() or ""
    assert SECRET not in text and "Traceback" not in text
    failures = [r for r in caplog.records if r.exc_info and SECRET in str(r.exc_info[1])]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    monkeypatch.undo()
    assert make_time_clock(in_process).id  # the server goes on serving


def test_error_answers_stay_small_whatever_was_sent(in_process: Client) -> None:
    """A 100,000-character value echoed into an error is cut: the caller still
    gets the status and its ErrorInfo (grpc refuses metadata over 8 KiB)."""
    tc = make_time_clock(in_process).id
    huge = "x" * 100_000
    with pytest.raises(grpc.RpcError) as raised:
        in_process(
            in_process.timeclock.ClockIn,
            timeclock_pb2.ClockInRequest(time_clock_id=tc, user_id=9170357, job_id=huge),
        )
    err = raised.value
    assert err.code() == grpc.StatusCode.NOT_FOUND
    info, _ = details(err)
    assert info.reason == "JOB_NOT_FOUND"
    assert info.metadata["jobId"].endswith("... (100000 characters)")
    text = err.details() or ""
    assert text.endswith("characters)") and len(text) < 500
    assert sum(len(k) + len(v) for k, v in trailing(err)) < 6_000


#: HTTP routes of each kind: one served by FastAPI's thread pool, one by a
#: coroutine, and a punch, which the lane serves outside FastAPI.
HTTP_KINDS: dict[str, tuple[type, str, str, str, dict[str, Any] | None]] = {
    "route on the thread pool": (
        SqlGeofenceRepository,
        "list_for",
        "GET",
        "/time-clock/v1/time-clocks/{tc}/geofences",
        None,
    ),
    "the punch lane": (
        SqlActivityRepository,
        "punch_state",
        "POST",
        "/time-clock/v1/time-clocks/{tc}/clock-in",
        {"userId": 9170357},
    ),
    "route as a coroutine": (
        SqlActivityRepository,
        "punch_state",
        "POST",
        "/geopunch/v1/time-clocks/{tc}/validate-punch",
        {"userId": 9170357, "kind": "clockIn"},
    ),
}


@pytest.mark.parametrize("kind", list(HTTP_KINDS))
def test_an_unexpected_error_over_http_is_json_with_a_request_id(
    in_process: Client,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not Starlette's plain-text page: the error body every other refusal
    has, code INTERNAL, the request id to quote, and the stack in the log
    once (not again by uvicorn)."""
    repository, method, verb, path, body = HTTP_KINDS[kind]
    tc = make_time_clock(in_process).id
    url = in_process.http_base + path.format(tc=tc)  # type: ignore[attr-defined]
    monkeypatch.setattr(repository, method, _fail)
    caplog.set_level(logging.INFO)
    answer = httpx.request(verb, url, json=body, headers={"X-API-KEY": API_KEY})
    assert answer.status_code == 500, answer.text
    found = answer.json()
    assert found["code"] == "INTERNAL"
    assert found["requestId"] == answer.headers["x-request-id"]
    assert found["requestId"] in found["detail"]
    assert SECRET not in answer.text and "Traceback" not in answer.text
    failures = [r for r in caplog.records if r.exc_info and SECRET in str(r.exc_info[1])]
    assert [r.name for r in failures] == ["geopunch"], [(r.name, r.getMessage()) for r in failures]
    monkeypatch.undo()
    again = httpx.request(verb, url, json=body, headers={"X-API-KEY": API_KEY})
    assert again.status_code == 200, again.text  # the server goes on serving
