"""The "who is on the clock" board: every user named, in order, each in one state."""

from __future__ import annotations

from geopunch.domain.models import ManualBreakType, TimeClock
from geopunch.domain.punches import ActivityRow
from geopunch.domain.timesheets import UserState, UserStatus, user_statuses

TC = TimeClock(
    id=7,
    name="Board",
    timezone="UTC",
    user_ids=frozenset({1, 2, 3, 4}),
    manual_breaks_enabled=True,
    manual_break_types=(
        ManualBreakType("coffee", "Coffee"),
        ManualBreakType("lunch", "Lunch", is_mandatory=True, min_duration_s=1800),
    ),
)


def _open(user: int, kind: str, start: int, break_type: str | None = None) -> ActivityRow:
    fields = dict.fromkeys(ActivityRow._fields)
    fields.update(
        id=f"a{user}",
        time_clock_id=TC.id,
        user_id=user,
        kind=kind,
        break_type_id=break_type,
        start_ts=start,
        start_tz="UTC",
        start_source="realtime",
        created_at=start,
        modified_at=start,
    )
    return ActivityRow._make(fields[name] for name in ActivityRow._fields)


def test_every_user_in_order_idle_ones_from_their_id() -> None:
    open_rows = {
        1: _open(1, "shift", 100),
        3: _open(3, "break", 200, "lunch"),
        4: _open(4, "break", 300, "coffee"),
    }
    board = user_statuses(TC, [4, 2, 1, 3], open_rows)
    assert set(board.busy) == {1, 3, 4}  # no object for the idle user until iterated
    assert list(board) == [
        UserStatus(4, UserState.ON_BREAK, open_rows[4], TC.manual_break_types[0], None),
        UserStatus(2, UserState.IDLE),
        UserStatus(1, UserState.ON_SHIFT, open_rows[1]),
        # A mandatory break may end once its minimum has passed.
        UserStatus(3, UserState.ON_BREAK, open_rows[3], TC.manual_break_types[1], 200 + 1800),
    ]


def test_a_break_of_a_type_since_removed_has_no_setting_and_no_end_time() -> None:
    row = _open(2, "break", 50, "gone")
    (status,) = user_statuses(TC, [2], {2: row})
    assert status == UserStatus(2, UserState.ON_BREAK, row, None, None)
