"""An activity answered from its flat row is the activity answered from its objects.

Listed pages and the board answer from ``ActivityRow`` tuples (gRPC and
JSON) without making an ``Activity``; events and single answers go through
the objects. Both must give the same bytes for every shape of row: open or
closed, with or without a location, any of its parts missing. The board's
answer is joined from lines kept encoded; it must parse as the message
built line by line. A listed gRPC page is joined from the lines the store
keeps; it must be the bytes of the message built whole.
"""

from __future__ import annotations

import numpy as np
import orjson
from hypothesis import given
from hypothesis import strategies as st

from geopunch.adapters.activity_messages import encode_line, encode_page, fill_activity_row
from geopunch.adapters.grpc.timeclock import (
    encode_statuses,
    fill_activity,
    fill_status,
)
from geopunch.adapters.grpc.totals_wire import encode_totals
from geopunch.adapters.http import answers
from geopunch.domain.events import json_bytes
from geopunch.domain.models import ManualBreakType
from geopunch.domain.punches import ActivityRow
from geopunch.domain.timesheets import (
    Board,
    DayTotals,
    UserState,
    UserStatus,
    UserTotals,
    WindowTotals,
    activity_json,
    activity_row_json,
)
from geopunch.v1 import timeclock_pb2

_text = st.none() | st.sampled_from(["", "Main St 1", "f-1"])
_coord = st.none() | st.floats(-90, 90, allow_nan=False)
# A board's busy line is kept by its status, and two statuses equal in value
# encode alike but for the sign of a zero coordinate (-0.0 == 0.0). A stored
# open activity never changes in place, so one activity is never seen with
# both; the examples here, though, reuse ids across draws (hypothesis shrinks
# them to the same value), and would meet that pair.
_board_coord = st.none() | st.floats(-90, 90, allow_nan=False).map(lambda x: x + 0.0)


@st.composite
def _end(
    draw: st.DrawFn, may_be_open: bool, coord: st.SearchStrategy[float | None] = _coord
) -> tuple[object, ...]:
    if may_be_open and draw(st.booleans()):
        return (None,) * 8
    address, lat, lon = draw(_text), draw(coord), draw(coord)
    located = address is not None or lat is not None or lon is not None
    accuracy = draw(st.none() | st.floats(0, 500)) if located else None
    source = draw(st.sampled_from(["realtime", "timeActivity"]))
    return (
        draw(st.integers(1, 2**40)),
        "Europe/Berlin",
        address,
        lat,
        lon,
        accuracy,
        source,
        draw(_text),
    )


@st.composite
def _rows(draw: st.DrawFn, coord: st.SearchStrategy[float | None] = _coord) -> ActivityRow:
    return ActivityRow._make(
        [
            draw(st.uuids()).hex,
            7,
            draw(st.integers(1, 2**40)),
            draw(st.sampled_from(["shift", "break"])),
            draw(_text),
            draw(_text),
            draw(_text),
            draw(st.none() | st.just("shift-0")),
            *draw(_end(False, coord)),
            *draw(_end(True, coord)),
            draw(st.integers(0, 2**40)),
            draw(st.integers(0, 2**40)),
            draw(_text),
        ]
    )


@given(_rows())
def test_the_row_and_the_objects_answer_alike(row: ActivityRow) -> None:
    a = row.activity()
    assert activity_row_json(row) == activity_json(a)
    from_row, from_objects = timeclock_pb2.TimeActivity(), timeclock_pb2.TimeActivity()
    fill_activity_row(from_row, row)
    fill_activity(from_objects, a)
    assert from_row.SerializeToString() == from_objects.SerializeToString()


_break_types = st.none() | st.builds(
    ManualBreakType,
    st.sampled_from(["rest", "lunch"]),
    st.sampled_from(["Rest", "Lunch"]),
    st.booleans(),
    st.integers(0, 7200),
    st.booleans(),
)


@st.composite
def _boards(draw: st.DrawFn) -> Board:
    users = draw(st.lists(st.integers(1, 2**40), unique=True, max_size=12))
    busy = {}
    for user in users:
        if draw(st.booleans()):
            continue
        row = draw(_rows(_board_coord))._replace(user_id=user, end_ts=None)
        if row.kind == "shift":
            busy[user] = UserStatus(user, UserState.ON_SHIFT, row)
        else:
            bt = draw(_break_types)
            endable = draw(st.none() | st.integers(0, 2**40))
            busy[user] = UserStatus(user, UserState.ON_BREAK, row, bt, endable)
    return Board(users, busy)


@given(_boards(), st.text(max_size=40))
def test_a_board_joined_from_kept_lines_parses_as_the_message_built_whole(
    board: Board, request_id: str
) -> None:
    whole = timeclock_pb2.GetUserStatusesResponse(request_id=request_id)
    for status in board:
        fill_status(whole.data.statuses.add(), status)
    for _ in range(2):  # encoded, then from the kept lines
        joined = timeclock_pb2.GetUserStatusesResponse.FromString(
            encode_statuses(request_id, board)
        )
        assert joined == whole


@given(_boards(), st.text(max_size=40))
def test_a_board_joined_from_kept_json_lines_is_the_answer_encoded_whole(
    board: Board, request_id: str
) -> None:
    whole = json_bytes(
        {"requestId": request_id, "data": {"statuses": [answers.user_status(s) for s in board]}}
    )
    for _ in range(2):  # encoded, then from the kept lines
        joined = answers.user_statuses(board)
        assert json_bytes({"requestId": request_id, "data": {"statuses": joined}}) == whole


# Seconds and ids of every varint length (zero is left out of the wire).
_int64 = st.one_of(st.integers(0, 86_400), st.integers(0, 2**63 - 1))
_totals = st.lists(
    st.builds(
        UserTotals,
        st.integers(1, 2**63 - 1),
        _int64,
        _int64,
        _int64,
        st.lists(
            st.builds(DayTotals, st.dates(), _int64, _int64, _int64),
            max_size=4,
        ).map(tuple),
    ),
    max_size=6,
    unique_by=lambda t: t.user_id,
)


def _columns(totals: list[UserTotals]) -> WindowTotals:
    """The same totals as ``totals()`` gives them, columns (any days, any order)."""
    days = sorted({d.day for t in totals for d in t.days})
    cells = [
        (days.index(d.day), d.worked_s, d.paid_break_s, d.unpaid_break_s)
        for t in totals
        for d in t.days
    ]
    sums = [(t.worked_s, t.paid_break_s, t.unpaid_break_s) for t in totals]
    window = WindowTotals(
        days,
        np.array([t.user_id for t in totals], dtype=np.int64),
        np.array(sums, dtype=np.int64).reshape(-1, 3),
        np.array(cells, dtype=np.int64).reshape(-1, 4),
        np.cumsum([len(t.days) for t in totals], dtype=np.int64),
    )
    assert window.per_user() == totals
    return window


@given(st.lists(_rows(), max_size=8), st.text(max_size=40), st.text(max_size=60), _totals)
def test_a_page_joined_from_stored_lines_is_the_answer_built_whole(
    rows: list[ActivityRow], request_id: str, token: str, totals: list[UserTotals]
) -> None:
    whole = timeclock_pb2.ListTimeActivitiesResponse(request_id=request_id)
    data = whole.data
    for row in rows:
        fill_activity_row(data.time_activities.add(), row)
    data.next_page_token = token
    rest = timeclock_pb2.ListTimeActivitiesResponse.Data(next_page_token=token)
    for t in totals:  # each user's message built from its objects, field by field
        out = data.totals.add(
            user_id=t.user_id,
            worked_seconds=t.worked_s,
            paid_break_seconds=t.paid_break_s,
            unpaid_break_seconds=t.unpaid_break_s,
        )
        for d in t.days:
            out.days.add(
                date=d.day.isoformat(),
                worked_seconds=d.worked_s,
                paid_break_seconds=d.paid_break_s,
                unpaid_break_seconds=d.unpaid_break_s,
            )
    encoded = encode_totals(_columns(totals))
    joined = encode_page(request_id, b"".join(map(encode_line, rows)), rest, encoded)
    assert timeclock_pb2.ListTimeActivitiesResponse.FromString(joined) == whole
    if rows or token or totals:  # an empty ``data`` is sent as present and empty
        assert joined == whole.SerializeToString()


@given(_totals)
def test_totals_written_from_the_columns_are_the_json_of_a_dict_a_user_and_a_day(
    totals: list[UserTotals],
) -> None:
    whole = [
        {
            "userId": t.user_id,
            "workedSeconds": t.worked_s,
            "paidBreakSeconds": t.paid_break_s,
            "unpaidBreakSeconds": t.unpaid_break_s,
            "days": [
                {
                    "date": d.day.isoformat(),
                    "workedSeconds": d.worked_s,
                    "paidBreakSeconds": d.paid_break_s,
                    "unpaidBreakSeconds": d.unpaid_break_s,
                }
                for d in t.days
            ],
        }
        for t in totals
    ]
    written = answers.window_totals(_columns(totals))
    assert orjson.dumps({"totals": written}) == orjson.dumps({"totals": whole})
