"""The board's lines kept encoded are counted in the metrics as kept or encoded,
so that an operator sees when a site has more users on the clock than the
kept lines hold."""

from __future__ import annotations

import tracemalloc
import uuid

import orjson
from prometheus_client import REGISTRY

from geopunch.adapters.grpc.timeclock import encode_statuses
from geopunch.adapters.http.answers import user_statuses
from geopunch.domain.punches import ActivityRow
from geopunch.domain.timesheets import Board, UserState, UserStatus


def _counted(since: tuple[float, ...] = (0, 0)) -> tuple[float, ...]:
    """Lines by source (kept, encoded) counted so far, less ``since``."""
    return tuple(
        (
            REGISTRY.get_sample_value(
                "geopunch_user_status_lines_total", {"api": "grpc", "source": s}
            )
            or 0
        )
        - before
        for s, before in zip(("kept", "encoded"), since, strict=True)
    )


def _open_shift(user: int, modified_at: int) -> ActivityRow:
    return ActivityRow(
        id=f"s_{uuid.uuid4().hex}", time_clock_id=1, user_id=user, kind="shift",
        job_id=None, break_type_id=None, scheduler_shift_id=None, from_shift_id=None,
        start_ts=1_000, start_tz="UTC", start_address=None, start_lat=None, start_lon=None,
        start_accuracy=None, start_source="timeClock", start_geofence_id=None,
        end_ts=None, end_tz=None, end_address=None, end_lat=None, end_lon=None,
        end_accuracy=None, end_source=None, end_geofence_id=None,
        created_at=1_000, modified_at=modified_at, notes=None,
    )  # fmt: skip


def test_each_line_is_counted_once_as_kept_or_encoded() -> None:
    # Users no other test answers for: the kept lines are the process's.
    first = 10**12 + uuid.uuid4().int % 10**12
    users = [first, first + 1, first + 2]
    row = _open_shift(first + 1, modified_at=1_000)
    board = Board(users, {first + 1: UserStatus(first + 1, UserState.ON_SHIFT, row)})
    before = _counted()
    encode_statuses("r1", board)
    assert _counted(before) == (0, 3)
    encode_statuses("r2", board)
    assert _counted(before) == (3, 3)
    changed = row._replace(modified_at=2_000)  # a changed activity is a new line
    board = Board(users, {first + 1: UserStatus(first + 1, UserState.ON_SHIFT, changed)})
    encode_statuses("r3", board)
    assert _counted(before) == (5, 4)


def test_kept_json_lines_hold_no_more_memory_than_their_length() -> None:
    """The HTTP board keeps up to tens of thousands of JSON lines: each must
    hold about its own length, not the 4 KB buffer orjson hands its bytes in
    (138 MB for a full cache of idle lines, against 8.6 MB right-sized)."""
    first = 2 * 10**12 + uuid.uuid4().int % 10**12
    users = list(range(first, first + 1000))
    rows = {u: UserStatus(u, UserState.ON_SHIFT, _open_shift(u, 1_000)) for u in users[::2]}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        answer = user_statuses(Board(users, rows))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    lines = bytes(orjson.dumps([answer]))
    # The kept lines, the answer and its list: about twice the text, far
    # from the 4 MB that 1,000 lines of 4 KB would hold.
    assert held < 4 * len(lines), (held, len(lines))
