"""Two server processes on one store see each other's time clock and geofence
changes (the index change feed), on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from geopunch.v1 import admin_pb2, geofences_pb2, location_pb2, timeclock_pb2
from tests.conftest import Client, ServerProcess, make_time_clock
from tests.e2e.test_locations_api import add_fence

SITE = (52.52, 13.405)
#: Followers poll every 100 ms here; a change must show within this long.
SEEN_WITHIN_S = 10.0


@pytest.fixture
def replicas(store_url: str, tmp_path: Path) -> Iterator[tuple[Client, Client]]:
    servers = [
        ServerProcess(db_url=store_url, env_extra={"GEOPUNCH_INDEX_POLL_MS": "100"})
        for _ in range(2)
    ]
    clients: list[Client] = []
    try:
        for srv in servers:
            srv.start(tmp_path)  # one after the other: the first one migrates
            clients.append(Client(srv.address))
        yield clients[0], clients[1]
    finally:
        for c in clients:
            c.close()
        for srv in servers:
            if srv.proc is not None:
                srv.terminate()


def _eventually(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + SEEN_WITHIN_S
    while not check():
        assert time.monotonic() < deadline, "the other replica never saw the change"
        time.sleep(0.05)


def _inside(client: Client, tc_id: int) -> bool | None:
    """Whether the site is inside a fence of the time clock; None while the
    replica does not know the time clock."""
    req = location_pb2.CheckLocationsRequest(time_clock_id=tc_id)
    req.packed.latitudes.append(SITE[0])
    req.packed.longitudes.append(SITE[1])
    try:
        data = client(client.locations.CheckLocations, req).data
    except grpc.RpcError as err:
        if err.code() is grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return data.inside_u8 == b"\x01"


def test_a_replica_sees_the_other_ones_changes(replicas: tuple[Client, Client]) -> None:
    a, b = replicas
    tc = make_time_clock(a, geofence_policy=admin_pb2.REQUIRE_INSIDE)
    # The time clock and its settings reach b's index.
    assert _inside(a, tc.id) is False
    _eventually(lambda: _inside(b, tc.id) is False)
    fence_id = add_fence(a, tc.id, *SITE, 200)
    assert _inside(a, tc.id)  # at once where it was made
    _eventually(lambda: _inside(b, tc.id))

    # A user added on a may punch on b, inside the fence made on a.
    tc.user_ids.append(4242)
    a(a.admin.UpdateTimeClock, admin_pb2.UpdateTimeClockRequest(time_clock=tc))
    clock_in = timeclock_pb2.ClockInRequest(time_clock_id=tc.id, user_id=4242, job_id="job-123")
    clock_in.location_data.latitude, clock_in.location_data.longitude = SITE

    def punched() -> bool:
        try:
            shift = b(b.timeclock.ClockIn, clock_in).data.shift
        except Exception:
            return False
        assert shift.start.geofence_id == fence_id
        return True

    _eventually(punched)

    a(
        a.geofences.DeleteGeofence,
        geofences_pb2.DeleteGeofenceRequest(time_clock_id=tc.id, fence_id=fence_id),
    )
    _eventually(lambda: not _inside(b, tc.id))
