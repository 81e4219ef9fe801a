"""EvaluateTrails, ReportLocations and WatchEvents end to end."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from geopunch.v1 import location_pb2, timeclock_pb2
from tests.conftest import Client, make_time_clock
from tests.e2e.test_locations_api import add_fence, at
from tests.helpers import expect_error

_users = itertools.count(70_000_000)


def fresh_user() -> int:
    """A user no other test reports for: staleness is judged per user across clocks."""
    return next(_users)


SITE = (40.7128, -74.0060)


def now() -> int:
    return int(time.time())


def samples(
    tc: int, dists: Sequence[float], t0: int, user: int, accuracies: list[float] | None = None
) -> location_pb2.TrailSamples:
    """A trail heading east from SITE, one sample a second."""
    pts = [at(*SITE, d, 90.0) for d in dists]
    return location_pb2.TrailSamples(
        user_ids=[user] * len(dists),
        time_clock_id=tc,
        timestamps=[t0 + i for i in range(len(dists))],
        latitudes=[p[0] for p in pts],
        longitudes=[p[1] for p in pts],
        accuracies=accuracies or [],
    )


def evaluate(client: Client, s: location_pb2.TrailSamples) -> location_pb2.TrailResults:
    req = location_pb2.EvaluateTrailsRequest(samples=s)
    out: location_pb2.TrailResults = client(client.locations.EvaluateTrails, req).data
    return out


def report(client: Client, s: location_pb2.TrailSamples) -> Any:
    req = location_pb2.ReportLocationsRequest(samples=s)
    return client(client.locations.ReportLocations, req).data


def watch(
    client: Client, after: int = 0, count: int = 1, timeout: float = 10, **filters: Any
) -> list[location_pb2.Event]:
    """The next ``count`` events after ``after``, then hang up."""
    req = location_pb2.WatchEventsRequest(after_seq=after, **filters)
    stream = client.locations.WatchEvents(req, metadata=client.metadata, timeout=timeout)
    out = []
    for event in stream:
        out.append(event)
        if len(out) == count:
            stream.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs
            break
    return out


def clock_with_fences(
    client: Client, user: int, *fences: tuple[float, int, str]
) -> tuple[int, list[str]]:
    """A time clock of ``user`` with fences east of SITE: (distance of the centre,
    size, exit action)."""
    tc = make_time_clock(client, user_ids=[user]).id
    ids = [
        add_fence(client, tc, *at(*SITE, d, 90.0), size, on_geofence_exit_action=action)
        for d, size, action in fences
    ]
    return tc, ids


def test_evaluate_trails_reports_one_exit_for_jitter_and_changes_nothing(client: Client) -> None:
    user = fresh_user()
    tc, (fid,) = clock_with_fences(client, user, (0, 100, "autoClockOut"))
    s = samples(tc, [10, 120, 90, 140, 160, 99, 900, 0], now() - 600, user, [5.0] * 7 + [400.0])
    data = evaluate(client, s)
    assert data.count == 8
    assert list(data.inside) == [True, False, True, False, False, True, False, True]
    assert list(data.status) == [0] * 7 + [5]  # the last sample is too inaccurate
    assert [(e.sample, e.fence_id, e.action, e.outcome) for e in data.exits] == [
        (4, fid, "autoClockOut", "clockedOut"),
        (6, fid, "autoClockOut", "clockedOut"),
    ]
    assert data.fence_ids[data.match_offsets[0] : data.match_offsets[1]] == [fid]
    assert json_format.MessageToDict(data)["exits"][0]["fenceId"] == fid
    # Evaluating twice gives the same answer: no state was kept.
    assert evaluate(client, s) == data


def test_evaluate_trails_across_the_antimeridian(client: Client) -> None:
    tc = make_time_clock(client, user_ids=[1]).id
    fid = add_fence(client, tc, -16.5, 180.0, 200)
    east, west, far = (
        at(-16.5, 180.0, 100, 90),
        at(-16.5, 180.0, 100, 270),
        at(-16.5, 180.0, 400, 90),
    )
    s = location_pb2.TrailSamples(
        user_ids=[1, 1, 1],
        time_clock_id=tc,
        timestamps=[now() - 3, now() - 2, now() - 1],
        latitudes=[east[0], west[0], far[0]],
        longitudes=[east[1], west[1], far[1]],
    )
    data = evaluate(client, s)
    assert list(data.inside) == [True, True, False]
    assert [(e.sample, e.fence_id) for e in data.exits] == [(2, fid)]


def test_a_user_id_past_40_bits_is_a_user_of_its_clock(client: Client) -> None:
    """Ids up to 2**53 - 1 may be assigned; the packed (clock, user) keys of
    the index hold 40 bits, and wider ids were refused as strangers."""
    user = 2**53 - 1 - fresh_user()
    tc, _ = clock_with_fences(client, user, (0, 100, "noAction"))
    s = samples(tc, [0, 50, 500], now(), user)
    assert list(evaluate(client, s).status) == [0, 0, 0]
    live = report(client, s)
    assert (live.accepted, live.rejected) == (3, 0)
    s.user_ids[:] = [user - 1] * 3  # not assigned
    assert list(evaluate(client, s).status) == [10, 10, 10]


def test_bad_samples_are_answered_per_sample(client: Client) -> None:
    user = fresh_user()
    tc, _ = clock_with_fences(client, user, (0, 100, "noAction"))
    s = samples(tc, [0, 0, 0], now(), user)
    s.latitudes[1] = math.nan
    s.accuracies.extend([5.0, 5.0, -1.0])
    s.time_clock_ids.extend([tc, tc, tc + 10_000_000])
    s.user_ids[0] = user + 1  # not a user of the time clock
    data = evaluate(client, s)
    assert list(data.status) == [10, 1, 2]
    live = report(client, s)
    assert list(live.results.status) == [10, 1, 2]
    assert (live.accepted, live.rejected) == (0, 3)
    big = location_pb2.TrailSamples(
        user_ids=[user] * 250_001,
        time_clock_id=tc,
        timestamps=[0] * 250_001,
        latitudes=[0.0] * 250_001,
        longitudes=[0.0] * 250_001,
    )
    expect_error(lambda: evaluate(client, big), grpc.StatusCode.INVALID_ARGUMENT, "BATCH_TOO_LARGE")
    ragged = samples(tc, [0, 0], now(), user)
    ragged.timestamps.pop()
    expect_error(
        lambda: evaluate(client, ragged), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )


def clock_in(client: Client, tc: int, ts: int, user: int) -> str:
    req = timeclock_pb2.ClockInRequest(time_clock_id=tc, user_id=user, timestamp=ts)
    return str(client(client.timeclock.ClockIn, req).data.shift.id)


def test_leaving_an_auto_clock_out_fence_closes_the_shift(client: Client) -> None:
    user = fresh_user()
    tc, (fid,) = clock_with_fences(client, user, (0, 100, "autoClockOut"))
    t0 = now() - 300
    shift_id = clock_in(client, tc, t0, user)
    first = report(client, samples(tc, [0, 50], t0 + 10, user))
    assert first.accepted == 2 and not first.results.exits
    second = report(client, samples(tc, [120, 400], t0 + 20, user))
    (exit_event,) = second.results.exits
    assert (exit_event.sample, exit_event.fence_id, exit_event.outcome) == (1, fid, "clockedOut")
    assert exit_event.shift_id == shift_id
    expect_error(
        lambda: client(
            client.timeclock.ClockOut,
            timeclock_pb2.ClockOutRequest(time_clock_id=tc, user_id=user),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_OPEN_SHIFT",
    )
    events = watch(client, count=4, time_clock_ids=[tc])
    assert [e.type for e in events] == ["clockIn", "geofenceEnter", "geofenceExit", "autoClockOut"]
    assert events[0].payload["activityId"] == shift_id
    assert (events[1].payload["fenceId"], events[1].payload["timestamp"]) == (fid, t0 + 10)
    assert events[3].payload["shiftId"] == shift_id
    assert events[3].payload["timestamp"] == t0 + 21
    assert [e.seq for e in events] == sorted({e.seq for e in events})
    assert len({e.id for e in events}) == 4 and all(e.id.startswith("evt_") for e in events)


def test_a_second_fence_prevents_the_automatic_clock_out(client: Client) -> None:
    user = fresh_user()
    # The site (100 m) and a yard whose circle overlaps it, 150 m east.
    tc, (site, yard) = clock_with_fences(
        client, user, (0, 100, "autoClockOut"), (150, 100, "sendNotification")
    )
    t0 = now() - 300
    clock_in(client, tc, t0, user)
    out = report(client, samples(tc, [60, 230], t0 + 5, user))
    (exit_event,) = out.results.exits
    assert (exit_event.fence_id, exit_event.outcome) == (site, "stillInsideAnotherFence")
    out = report(client, samples(tc, [600], t0 + 10, user))
    (exit_event,) = out.results.exits
    assert (exit_event.fence_id, exit_event.outcome) == (yard, "notified")
    events = watch(client, count=6, time_clock_ids=[tc])
    assert [e.type for e in events] == [
        "clockIn",
        *["geofenceEnter"] * 2,  # the first sample is inside both
        *["geofenceExit"] * 2,
        "exitNotification",
    ]
    assert {e.payload["fenceId"] for e in events[1:3]} == {site, yard}
    # The shift is still open: a normal clock-out works.
    client(client.timeclock.ClockOut, timeclock_pb2.ClockOutRequest(time_clock_id=tc, user_id=user))


def test_stale_live_samples_are_ignored_and_counted(client: Client) -> None:
    user = fresh_user()
    tc, _ = clock_with_fences(client, user, (0, 100, "noAction"))
    t0 = now() - 300
    assert report(client, samples(tc, [0, 0], t0 + 100, user)).accepted == 2
    # Older than the last accepted sample:
    late = report(client, samples(tc, [900, 0], t0 + 50, user))
    assert (late.accepted, late.stale) == (0, 2)
    assert not late.results.exits
    assert list(late.results.status) == [6, 6]
    out = report(client, samples(tc, [900], t0 + 101, user))
    assert out.accepted == 1 and len(out.results.exits) == 1
    # The user's last accepted sample counts across time clocks.
    other, _ = clock_with_fences(client, user, (0, 100, "noAction"))
    assert report(client, samples(other, [0], t0 + 100, user)).stale == 1
    assert report(client, samples(other, [0], t0 + 101, user)).accepted == 1


def test_a_reconnecting_subscriber_gets_every_event_exactly_once(client: Client) -> None:
    user = fresh_user()
    tc, _ = clock_with_fences(client, user, (0, 100, "sendNotification"))
    t0 = now() - 3000
    for k in range(3):  # each round: in, out -> geofenceExit + exitNotification
        report(client, samples(tc, [0, 500], t0 + 10 * k, user))
    wanted = ["geofenceExit", "exitNotification"]
    got = watch(client, count=4, time_clock_ids=[tc], types=wanted)
    cursor = got[-1].seq
    # While nobody listens, more events are committed...
    for k in range(3, 5):
        report(client, samples(tc, [0, 500], t0 + 10 * k, user))
    # ...and a reconnect from the cursor receives exactly the rest, in order.
    rest = watch(client, after=cursor, count=6, time_clock_ids=[tc], types=wanted)
    seqs = [e.seq for e in got + rest]
    assert len(set(seqs)) == 10 and seqs == sorted(seqs)
    assert [e.type for e in got + rest] == ["geofenceExit", "exitNotification"] * 5
    only_exits = watch(client, count=5, time_clock_ids=[tc], types=["geofenceExit"])
    assert [e.seq for e in only_exits] == seqs[::2]


def test_a_live_subscriber_is_woken_by_new_events(client: Client) -> None:
    user = fresh_user()
    tc, _ = clock_with_fences(client, user, (0, 100, "noAction"))
    received: list[location_pb2.Event] = []
    listener = threading.Thread(
        target=lambda: received.extend(
            watch(client, count=1, time_clock_ids=[tc], types=["geofenceExit"], timeout=20)
        )
    )
    listener.start()
    time.sleep(0.5)  # the stream is now waiting at the end of the log
    started = time.perf_counter()
    report(client, samples(tc, [0, 500], now() - 60, user))
    listener.join(20)
    assert [e.type for e in received] == ["geofenceExit"]
    assert time.perf_counter() - started < 5


def test_watch_events_rejects_unknown_types(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as info:
        watch(client, types=["nope"], timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def as_raw(s: location_pb2.TrailSamples) -> location_pb2.TrailSamples:
    """The same samples with the numeric columns as raw little-endian bytes."""
    import numpy as np

    def col(values: Any, dtype: str) -> bytes:
        return np.asarray(list(values), dtype).tobytes() if len(values) else b""

    return location_pb2.TrailSamples(
        time_clock_id=s.time_clock_id,
        job_ids=s.job_ids,
        raw=location_pb2.RawTrailColumns(
            user_ids_i64=col(s.user_ids, "<i8"),
            time_clock_ids_i64=col(s.time_clock_ids, "<i8"),
            timestamps_i64=col(s.timestamps, "<i8"),
            latitudes_f64=col(s.latitudes, "<f8"),
            longitudes_f64=col(s.longitudes, "<f8"),
            accuracies_f64=col(s.accuracies, "<f8"),
        ),
    )


def test_raw_trail_columns_give_the_same_answers(client: Client) -> None:
    user = fresh_user()
    tc, _ = clock_with_fences(client, user, (0, 100, "sendNotification"))
    jitter = samples(tc, [10, 120, 90, 140, 160, 99, 900, 0], now() - 600, user, [5.0] * 8)
    bad = samples(tc, [0, 0, 0], now(), user)
    bad.latitudes[1] = math.nan
    bad.accuracies.extend([5.0, 5.0, -1.0])
    bad.time_clock_ids.extend([tc, tc, tc + 10_000_000])
    bad.user_ids[0] = user + 1
    for s in (jitter, bad):
        assert evaluate(client, as_raw(s)) == evaluate(client, s)
    # Live: one user through raw columns, one through repeated fields, same walk.
    twin = fresh_user()
    other, _ = clock_with_fences(client, twin, (0, 100, "sendNotification"))
    t0 = now() - 300
    for dists in ([0, 50], [150, 300], [20, 200]):
        a = report(client, as_raw(samples(tc, dists, t0, user)))
        b = report(client, samples(other, dists, t0, twin))
        t0 += len(dists)
        assert (a.accepted, a.stale, a.ignored, a.rejected) == (
            b.accepted,
            b.stale,
            b.ignored,
            b.rejected,
        )
        assert list(a.results.status) == list(b.results.status)
        assert list(a.results.inside) == list(b.results.inside)
        assert [(e.sample, e.action, e.outcome) for e in a.results.exits] == [
            (e.sample, e.action, e.outcome) for e in b.results.exits
        ]
        assert a.results.exits or dists[0] == 0  # the walks leave the fence twice


def test_raw_trail_columns_are_checked(client: Client) -> None:
    user = fresh_user()
    tc, _ = clock_with_fences(client, user, (0, 100, "noAction"))
    s = as_raw(samples(tc, [0, 10], now(), user))
    mixed = location_pb2.TrailSamples()
    mixed.CopyFrom(s)
    mixed.latitudes.extend([1.0, 2.0])
    _, violations = expect_error(
        lambda: evaluate(client, mixed), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )
    assert [field for field, _ in violations] == ["samples.latitudes"]
    torn = location_pb2.TrailSamples()
    torn.CopyFrom(s)
    torn.raw.timestamps_i64 = torn.raw.timestamps_i64[:-1]
    _, violations = expect_error(
        lambda: report(client, torn), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )
    assert [field for field, _ in violations] == ["samples.raw.timestamps_i64"]
    short = location_pb2.TrailSamples()
    short.CopyFrom(s)
    short.raw.longitudes_f64 = short.raw.longitudes_f64[:8]  # whole values, one too few
    expect_error(
        lambda: evaluate(client, short), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )


def test_a_sample_from_the_future_locks_no_one_out(client: Client) -> None:
    """Regression: one live sample stamped 9999999999 outside an automatic
    clock-out fence used to close the shift at that time, after which every
    ClockIn overlapped it and every later sample was stale."""
    user = fresh_user()
    tc, (fid,) = clock_with_fences(client, user, (0, 100, "autoClockOut"))
    t0 = now() - 300
    shift_id = clock_in(client, tc, t0, user)
    s = samples(tc, [0, 600, 600], t0 + 10, user)
    s.timestamps[:] = [t0 + 10, 9_999_999_999, -5]
    out = report(client, s)
    assert (out.accepted, out.rejected, out.stale) == (1, 2, 0)
    assert list(out.results.status) == [0, 11, 11]
    assert not out.results.exits
    # The trail goes on at the real time: the exit closes the shift then.
    out = report(client, samples(tc, [600], t0 + 20, user))
    (exit_event,) = out.results.exits
    assert (exit_event.fence_id, exit_event.outcome, exit_event.shift_id) == (
        fid,
        "clockedOut",
        shift_id,
    )
    # And the user clocks in again.
    assert clock_in(client, tc, now() - 10, user)
    # EvaluateTrails refuses the same samples one by one and reports no exit.
    history = samples(tc, [0, 600, 600], t0, user)
    history.timestamps[:] = [t0, 9_999_999_999, 100]
    data = evaluate(client, history)
    assert list(data.status) == [0, 11, 11] and not data.exits
