"""Event-log retention on a real server: once old events are purged, a
subscriber resuming from a cursor before them is told (gRPC OUT_OF_RANGE,
HTTP 410, reason EVENTS_PURGED) instead of going on past a silent gap, and
one starting from 0 gets the oldest events kept."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import httpx

from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine
from geopunch.service.events import purge_events
from geopunch.v1 import location_pb2, scheduler_pb2
from tests.conftest import API_KEY, Client, ServerProcess, make_scheduler
from tests.e2e.test_accounts import events_of
from tests.helpers import details

USER = 9170357


def test_a_cursor_that_retention_passed_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    srv = ServerProcess(db_url=url)
    srv.start(tmp_path)
    c = Client(srv.address)
    engine = make_engine(url)
    try:
        sched = make_scheduler(c, user_ids=[USER])
        start = int(time.time()) + 86_400
        shifts = [
            scheduler_pb2.ScheduledShift(
                start_time=start + i * 3600,
                end_time=start + i * 3600 + 1800,
                title="Dock",
                is_published=True,
                assigned_user_ids=[USER],
            )
            for i in range(3)
        ]
        c(
            c.scheduler.CreateShifts,
            scheduler_pb2.CreateShiftsRequest(scheduler_id=sched.id, shifts=shifts),
        )
        seqs = [e.seq for e in events_of(c)]
        assert len(seqs) == 3
        # 40 days on, with 30 days kept: the three are purged.
        assert purge_events(SqlUnitOfWorkFactory(engine), time.time() + 40 * 86400, 30 * 86400) == 3

        stream = c.locations.WatchEvents(
            location_pb2.WatchEventsRequest(after_seq=seqs[0]), metadata=c.metadata, timeout=5
        )
        try:
            list(stream)
            raise AssertionError("the stream was not refused")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.OUT_OF_RANGE
            info, _ = details(err)
            assert info.reason == "EVENTS_PURGED"
            assert info.metadata["purgedThrough"] == str(seqs[-1])
        assert events_of(c) == []  # from 0: the oldest kept (none)

        r = httpx.get(
            f"http://{srv.http_address}/geopunch/v1/events",
            headers={"X-API-KEY": API_KEY, "Last-Event-ID": str(seqs[1])},
            timeout=5,
        )
        assert (r.status_code, r.json()["code"]) == (410, "EVENTS_PURGED")
    finally:
        engine.dispose()
        c.close()
        srv.terminate()
