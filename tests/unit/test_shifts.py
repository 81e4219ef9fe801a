"""Shift validation and break placement: pure domain, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.models import Job
from geopunch.domain.punches import PunchLocation
from geopunch.domain.shifts import (
    DEFAULT_SHIFT_COLOR,
    ScheduledShift,
    Scheduler,
    ShiftBreak,
    ShiftLocation,
    published_events,
    resolve_break,
    validate_scheduler,
    validate_shifts,
)

NY = ZoneInfo("America/New_York")
SCHED = Scheduler(
    id=7,
    name="s",
    timezone="America/New_York",
    jobs=(Job("j", color="#112233"), Job("j-sub", parent_id="j"), Job("plain")),
    user_ids=frozenset({1, 2, 3}),
)


def ts(zone: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=zone).timestamp())


def utc(value: int) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def shift(**kw: object) -> ScheduledShift:
    base: dict[str, object] = {
        "start_time": ts(NY, 2025, 1, 15, 9),
        "end_time": ts(NY, 2025, 1, 15, 17),
        "title": "t",
    }
    return ScheduledShift(**{**base, **kw})  # type: ignore[arg-type]


def problems(*drafts: ScheduledShift, sched: Scheduler = SCHED) -> list[tuple[str, ErrorCode]]:
    with pytest.raises(DomainError) as info:
        validate_shifts(sched, drafts)
    return [(v.field, v.reason) for v in info.value.violations]


def brk(minute: int, duration: int = 15, type_: str = "paid") -> ShiftBreak:
    return ShiftBreak("b", type_, minute, duration)


def test_defaults() -> None:
    (plain, open_, job) = validate_shifts(
        SCHED, [shift(), shift(is_open_shift=True), shift(title=None, job_id="j")]
    )
    assert plain.timezone == "America/New_York" and plain.color == DEFAULT_SHIFT_COLOR
    assert plain.is_published is False and plain.is_open_shift is False
    assert plain.open_spots is None and plain.is_require_admin_approval is None
    assert open_.open_spots == 1 and open_.is_require_admin_approval is False
    assert job.color == "#112233"
    sub = validate_shifts(SCHED, [shift(job_id="j-sub")])[0]
    assert sub.color == DEFAULT_SHIFT_COLOR  # its own job has no color
    assert validate_shifts(SCHED, [shift(color="#abc")])[0].color == "#abc"


def test_millisecond_timestamps_are_named_not_misread() -> None:
    start = ts(NY, 2025, 1, 15, 9)
    assert problems(shift(start_time=start * 1000, end_time=(start + 60) * 1000)) == [
        ("shifts[0].start_time", ErrorCode.TIMESTAMP_NOT_SECONDS),
        ("shifts[0].end_time", ErrorCode.TIMESTAMP_NOT_SECONDS),
    ]
    assert problems(shift(end_time=10**12 + 1)) == [
        ("shifts[0].end_time", ErrorCode.TIMESTAMP_NOT_SECONDS)
    ]
    # Seconds after the year 9999 are refused too, but not taken for milliseconds.
    assert problems(shift(start_time=10**12 - 3600, end_time=10**12)) == [
        ("shifts[0].start_time", ErrorCode.INVALID_ARGUMENT),
        ("shifts[0].end_time", ErrorCode.INVALID_ARGUMENT),
    ]
    late = datetime(9999, 12, 29, 1, tzinfo=UTC).timestamp()
    validate_shifts(
        SCHED, [shift(start_time=int(late), end_time=int(late) + 3600, breaks=(brk(30),))]
    )


def test_time_range_and_24_hours_in_real_seconds() -> None:
    start = ts(NY, 2025, 1, 15, 9)
    assert problems(shift(end_time=start)) == [("shifts[0].end_time", ErrorCode.INVALID_TIME_RANGE)]
    validate_shifts(SCHED, [shift(end_time=start + 24 * 3600)])
    assert problems(shift(end_time=start + 24 * 3600 + 1)) == [
        ("shifts[0].end_time", ErrorCode.SHIFT_TOO_LONG)
    ]
    # Midnight to midnight on the day clocks fall back is 25 real hours.
    fall_back = shift(start_time=ts(NY, 2025, 11, 2, 0), end_time=ts(NY, 2025, 11, 3, 0))
    assert problems(fall_back) == [("shifts[0].end_time", ErrorCode.SHIFT_TOO_LONG)]
    # ...and on the day they spring forward, 23.
    validate_shifts(
        SCHED, [shift(start_time=ts(NY, 2025, 3, 9, 0), end_time=ts(NY, 2025, 3, 10, 0))]
    )
    assert problems(shift(start_time=0)) == [("shifts[0].start_time", ErrorCode.INVALID_ARGUMENT)]


def test_title_or_job_and_job_must_belong_to_the_scheduler() -> None:
    assert problems(shift(title=None)) == [("shifts[0].title", ErrorCode.TITLE_OR_JOB_REQUIRED)]
    assert problems(shift(title="   ")) == [("shifts[0].title", ErrorCode.TITLE_OR_JOB_REQUIRED)]
    assert problems(shift(job_id="elsewhere")) == [
        ("shifts[0].job_id", ErrorCode.JOB_NOT_IN_SCHEDULER)
    ]
    # An unknown job still counts as "a job was given": one problem, not two.
    assert problems(shift(title=None, job_id="elsewhere")) == [
        ("shifts[0].job_id", ErrorCode.JOB_NOT_IN_SCHEDULER)
    ]


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (
            {"assigned_user_ids": (1, 99)},
            [ErrorCode.ASSIGNED_USERS_NOT_FOUND, ErrorCode.FEATURE_REQUIRED],
        ),
        ({"is_published": True}, [ErrorCode.PUBLISHED_SHIFT_NEEDS_USER]),
        ({"is_open_shift": True, "assigned_user_ids": (1,)}, [ErrorCode.OPEN_SHIFT_HAS_USERS]),
        ({"assigned_user_ids": (1, 2)}, [ErrorCode.FEATURE_REQUIRED]),
        ({"assigned_user_ids": (1, 1)}, [ErrorCode.INVALID_ARGUMENT, ErrorCode.FEATURE_REQUIRED]),
    ],
)
def test_assigned_user_rules(kw: dict[str, object], expected: list[ErrorCode]) -> None:
    assert [r for _, r in problems(shift(**kw))] == expected


def test_assigned_user_rules_that_pass() -> None:
    validate_shifts(SCHED, [shift(is_published=True, assigned_user_ids=(2,))])
    validate_shifts(SCHED, [shift(is_published=True, is_open_shift=True)])
    validate_shifts(SCHED, [shift(is_published=False)])  # a draft may be empty
    multi = replace(SCHED, multi_user_shifts=True)
    validate_shifts(multi, [shift(is_published=True, assigned_user_ids=(1, 2, 3))])


def test_open_spot_rules() -> None:
    multi = replace(SCHED, multi_user_shifts=True)
    assert problems(shift(open_spots=1)) == [
        ("shifts[0].open_spots", ErrorCode.OPEN_SPOTS_NOT_OPEN_SHIFT)
    ]
    assert problems(shift(is_open_shift=True, open_spots=101), sched=multi) == [
        ("shifts[0].open_spots", ErrorCode.OPEN_SPOTS_LIMIT)
    ]
    assert problems(shift(is_open_shift=True, open_spots=2)) == [
        ("shifts[0].open_spots", ErrorCode.FEATURE_REQUIRED)
    ]
    assert problems(shift(is_open_shift=True, open_spots=0)) == [
        ("shifts[0].open_spots", ErrorCode.INVALID_ARGUMENT)
    ]
    assert validate_shifts(SCHED, [shift(is_open_shift=True, open_spots=1)])[0].open_spots == 1
    assert validate_shifts(multi, [shift(is_open_shift=True, open_spots=100)])[0].open_spots == 100
    assert problems(shift(is_require_admin_approval=True)) == [
        ("shifts[0].is_require_admin_approval", ErrorCode.INVALID_ARGUMENT)
    ]
    assert validate_shifts(SCHED, [shift(is_require_admin_approval=False)])


def test_location_and_color_and_timezone() -> None:
    gps = PunchLocation("1 Main St", 40.0, -74.0)
    validate_shifts(SCHED, [shift(location=ShiftLocation(False, gps))])
    validate_shifts(SCHED, [shift(job_id="j", location=ShiftLocation(True))])
    assert problems(shift(location=ShiftLocation(True))) == [
        ("shifts[0].location_data.is_referenced_to_job", ErrorCode.INVALID_ARGUMENT)
    ]
    assert problems(shift(location=ShiftLocation(False))) == [
        ("shifts[0].location_data.gps", ErrorCode.INVALID_LOCATION)
    ]
    bad = PunchLocation("x", 91.0, float("nan"))
    assert problems(shift(location=ShiftLocation(False, bad))) == [
        ("shifts[0].location_data.gps.latitude", ErrorCode.INVALID_LOCATION),
        ("shifts[0].location_data.gps.longitude", ErrorCode.INVALID_LOCATION),
    ]
    assert problems(shift(color="#12345")) == [("shifts[0].color", ErrorCode.INVALID_ARGUMENT)]
    assert problems(shift(timezone="EST5EDT ")) == [
        ("shifts[0].timezone", ErrorCode.INVALID_TIMEZONE)
    ]
    assert validate_shifts(SCHED, [shift(timezone="Asia/Kolkata")])[0].timezone == "Asia/Kolkata"


def test_breaks_total_and_fields() -> None:
    eight_hours = shift()
    validate_shifts(SCHED, [replace(eight_hours, breaks=(brk(600, 240), brk(900, 240)))])
    assert problems(replace(eight_hours, breaks=(brk(600, 240), brk(900, 241)))) == [
        ("shifts[0].breaks", ErrorCode.BREAKS_EXCEED_SHIFT)
    ]
    assert problems(replace(eight_hours, breaks=(brk(1440), brk(600, 0), brk(600, 5, "free")))) == [
        ("shifts[0].breaks[0].start_time", ErrorCode.INVALID_ARGUMENT),
        ("shifts[0].breaks[1].duration", ErrorCode.INVALID_ARGUMENT),
        ("shifts[0].breaks[2].type", ErrorCode.INVALID_ARGUMENT),
    ]


def test_break_minutes_are_wall_clock_in_the_shift_zone() -> None:
    (s,) = validate_shifts(SCHED, [shift(breaks=(brk(720, 30),))])
    b = s.breaks[0]
    assert (b.start_ts, b.end_ts) == (ts(NY, 2025, 1, 15, 12), ts(NY, 2025, 1, 15, 12, 30))
    tokyo = ZoneInfo("Asia/Tokyo")
    (s,) = validate_shifts(
        SCHED,
        [
            shift(
                timezone="Asia/Tokyo",
                start_time=ts(tokyo, 2025, 1, 15, 9),
                end_time=ts(tokyo, 2025, 1, 15, 17),
                breaks=(brk(720),),
            )
        ],
    )
    assert s.breaks[0].start_ts == ts(tokyo, 2025, 1, 15, 12)


def test_a_break_after_midnight_lands_on_the_next_day() -> None:
    night = shift(start_time=ts(NY, 2025, 1, 15, 22), end_time=ts(NY, 2025, 1, 16, 6))
    (s,) = validate_shifts(SCHED, [replace(night, breaks=(brk(60), brk(1380)))])
    assert [b.start_ts for b in s.breaks] == [ts(NY, 2025, 1, 16, 1), ts(NY, 2025, 1, 15, 23)]


def test_breaks_across_dst_changes() -> None:
    # Spring forward (2025-03-09): 02:00 EST jumps to 03:00 EDT.
    start, end = ts(NY, 2025, 3, 9, 0), ts(NY, 2025, 3, 9, 8)
    assert end - start == 7 * 3600
    assert resolve_break(start, end, NY, 4 * 60, 15)[0] == start + 3 * 3600  # 04:00 EDT
    assert resolve_break(start, end, NY, 150, 15)[0] == ts(
        NY, 2025, 3, 9, 3, 30
    )  # gap: 02:30→03:30
    # Fall back (2025-11-02): 01:00-02:00 happens twice; the first one is taken.
    start, end = ts(NY, 2025, 11, 2, 0), ts(NY, 2025, 11, 2, 8)
    assert end - start == 9 * 3600
    assert resolve_break(start, end, NY, 90, 15)[0] == start + 90 * 60
    assert resolve_break(start, end, NY, 4 * 60, 15)[0] == start + 5 * 3600
    assert utc(resolve_break(start, end, NY, 4 * 60, 15)[0]).hour == 9  # 04:00 EST


def test_a_break_outside_the_shift_is_kept_on_the_first_day() -> None:
    # The API accepts such breaks (the shift document's own example has them).
    start, end = ts(NY, 2025, 1, 15, 2), ts(NY, 2025, 1, 15, 12)
    assert resolve_break(start, end, NY, 900, 15)[0] == ts(NY, 2025, 1, 15, 15)


def test_every_invalid_shift_is_named_by_index() -> None:
    drafts = [shift()] * 10
    drafts[2] = shift(title=None)
    drafts[7] = shift(end_time=shift().start_time - 1, color="red")
    assert problems(*drafts) == [
        ("shifts[2].title", ErrorCode.TITLE_OR_JOB_REQUIRED),
        ("shifts[7].end_time", ErrorCode.INVALID_TIME_RANGE),
        ("shifts[7].color", ErrorCode.INVALID_ARGUMENT),
    ]


def test_batch_size() -> None:
    assert problems(*[shift()] * 501) == [("shifts", ErrorCode.TOO_MANY_SHIFTS)]
    assert problems() == [("shifts", ErrorCode.INVALID_ARGUMENT)]
    assert len(validate_shifts(SCHED, [shift()] * 500)) == 500


def test_published_events_one_per_user_of_published_shifts() -> None:
    multi = replace(SCHED, multi_user_shifts=True)
    shifts = validate_shifts(
        multi,
        [
            shift(is_published=True, assigned_user_ids=(1, 2)),
            shift(is_published=False, assigned_user_ids=(3,)),
            shift(is_published=True, is_open_shift=True),
        ],
    )
    events = published_events([replace(s, id=f"s{i}") for i, s in enumerate(shifts)], now=5)
    assert [(e.type, e.user_id, e.payload["shiftId"]) for e in events] == [
        ("shiftPublished", 1, "s0"),
        ("shiftPublished", 2, "s0"),
    ]
    assert all(e.scheduler_id == 7 and e.occurred_at == 5 for e in events)


def test_scheduler_settings() -> None:
    validate_scheduler(SCHED, ["jobs[0]", "jobs[0].sub_jobs[0]", "jobs[1]"])
    bad = Scheduler(
        id=0,
        name=" ",
        timezone="x",
        jobs=(Job("a", color="#zzzzzz"), Job("a")),
        user_ids=frozenset({-1}),
    )
    with pytest.raises(DomainError) as info:
        validate_scheduler(bad, ["jobs[0]", "jobs[1]"])
    assert [v.field for v in info.value.violations] == [
        "scheduler.id",
        "scheduler.name",
        "scheduler.timezone",
        "jobs[1].id",
        "jobs[0].color",
        "scheduler.user_ids",
    ]
