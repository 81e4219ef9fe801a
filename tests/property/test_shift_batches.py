"""Random shift batches: valid ones are stored exactly, every invalid one is reported."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine, migrate
from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.models import Job
from geopunch.domain.punches import PunchLocation
from geopunch.domain.shifts import (
    CustomField,
    ScheduledShift,
    Scheduler,
    ShiftBreak,
    ShiftLayer,
    ShiftLocation,
)
from geopunch.service import scheduler as use_cases
from tests.helpers import AccountStore, SetClock

ZONES = ("UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kathmandu")
USERS = (1, 2, 3, 4)
JOBS = ("j", "k", "k-sub")


@pytest.fixture(scope="module")
def uows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccountStore]:
    path: Path = tmp_path_factory.mktemp("shifts") / "store.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    factory = AccountStore(engine)
    with factory() as uow:
        for multi in (False, True):
            uow.schedulers.add(scheduler(multi))
        uow.commit()
    yield factory
    engine.dispose()


def scheduler(multi: bool) -> Scheduler:
    return Scheduler(
        id=2 if multi else 1,
        name="s",
        timezone="America/New_York",
        jobs=(Job("j", color="#010203"), Job("k"), Job("k-sub", parent_id="k")),
        user_ids=frozenset(USERS),
        multi_user_shifts=multi,
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.text(max_size=8) | st.integers(-1000, 1000).map(float),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def valid_shifts(draw: st.DrawFn, multi: bool) -> ScheduledShift:
    start = draw(st.integers(1_500_000_000, 2_000_000_000))
    length = draw(st.integers(60, 24 * 3600))
    job = draw(st.none() | st.sampled_from(JOBS))
    title = draw(st.text(min_size=1, max_size=20).filter(str.strip)) if job is None else None
    is_open = draw(st.booleans())
    published = draw(st.booleans())
    most = len(USERS) if multi else 1
    users: tuple[int, ...] = ()
    if not is_open:
        users = tuple(
            draw(
                st.lists(
                    st.sampled_from(USERS),
                    min_size=1 if published else 0,
                    max_size=most,
                    unique=True,
                )
            )
        )
    spots = draw(st.none() | st.integers(1, 100 if multi else 1)) if is_open else None
    approval = draw(st.none() | st.booleans()) if is_open else draw(st.none() | st.just(False))
    budget = length // 60
    breaks = []
    for _ in range(draw(st.integers(0, 3))):
        if budget < 1:
            break
        duration = draw(st.integers(1, min(budget, 1440)))
        budget -= duration
        breaks.append(
            ShiftBreak(
                draw(st.text(max_size=10)),
                draw(st.sampled_from(["paid", "unpaid"])),
                draw(st.integers(0, 1439)),
                duration,
            )
        )
    has_details = draw(st.booleans())
    return ScheduledShift(
        start_time=start,
        end_time=start + length,
        title=title,
        job_id=job,
        timezone=draw(st.none() | st.sampled_from(ZONES)),
        is_published=draw(st.none() | st.just(published)) if not published else True,
        is_open_shift=draw(st.none() | st.just(False)) if not is_open else True,
        open_spots=spots,
        is_require_admin_approval=approval,
        assigned_user_ids=users,
        location=draw(
            st.none()
            | st.just(ShiftLocation(False, PunchLocation("addr", 40.5, -73.25)))
            | (st.just(ShiftLocation(True)) if job is not None else st.none())
        ),
        color=draw(st.none() | st.sampled_from(["#4B7AC5", "#abc", "#00FF00"])),
        notes=tuple(draw(st.lists(st.text(max_size=30), max_size=2))),
        breaks=tuple(breaks),
        statuses=tuple(
            draw(
                st.lists(st.dictionaries(st.text(max_size=5), json_values, max_size=2), max_size=2)
            )
        ),
        has_details=has_details,
        shift_layers=(ShiftLayer("layer", "v"),) if has_details else (),
        shift_source=draw(st.none() | st.just("API")) if has_details else None,
        custom_fields=tuple(
            CustomField(f"f{i}", v) for i, v in enumerate(draw(st.lists(json_values, max_size=2)))
        ),
    )


def _defects(s: ScheduledShift) -> dict[ErrorCode, ScheduledShift]:
    """Ways to break a valid shift, each with the reason it must be reported with."""
    other_users = tuple(u for u in USERS if u not in s.assigned_user_ids)[:1] or (1,)
    return {
        ErrorCode.TIMESTAMP_NOT_SECONDS: replace(s, end_time=s.end_time * 1000),
        ErrorCode.INVALID_TIME_RANGE: replace(s, end_time=s.start_time),
        ErrorCode.SHIFT_TOO_LONG: replace(s, end_time=s.start_time + 24 * 3600 + 1),
        ErrorCode.TITLE_OR_JOB_REQUIRED: replace(s, title=None, job_id=None, location=None),
        ErrorCode.JOB_NOT_IN_SCHEDULER: replace(s, job_id="nope"),
        ErrorCode.ASSIGNED_USERS_NOT_FOUND: replace(
            s,
            is_open_shift=False,
            open_spots=None,
            is_require_admin_approval=None,
            assigned_user_ids=(99,),
        ),
        ErrorCode.PUBLISHED_SHIFT_NEEDS_USER: replace(
            s,
            is_published=True,
            is_open_shift=False,
            open_spots=None,
            is_require_admin_approval=None,
            assigned_user_ids=(),
        ),
        ErrorCode.OPEN_SHIFT_HAS_USERS: replace(
            s, is_open_shift=True, open_spots=None, assigned_user_ids=other_users
        ),
        ErrorCode.OPEN_SPOTS_NOT_OPEN_SHIFT: replace(
            s,
            is_open_shift=False,
            open_spots=1,
            is_require_admin_approval=None,
            assigned_user_ids=s.assigned_user_ids or (1,),
        ),
        ErrorCode.OPEN_SPOTS_LIMIT: replace(
            s, is_open_shift=True, open_spots=101, assigned_user_ids=()
        ),
        ErrorCode.BREAKS_EXCEED_SHIFT: replace(
            s,
            end_time=min(s.end_time, s.start_time + 3600),
            breaks=(ShiftBreak("x", "paid", 0, 61),),
        ),
        ErrorCode.INVALID_TIMEZONE: replace(s, timezone="Not/AZone"),
    }


@st.composite
def batches(draw: st.DrawFn) -> tuple[bool, list[ScheduledShift], dict[int, ErrorCode]]:
    multi = draw(st.booleans())
    shifts = draw(st.lists(valid_shifts(multi), min_size=1, max_size=12))
    broken: dict[int, ErrorCode] = {}
    for i in draw(st.sets(st.integers(0, len(shifts) - 1), max_size=len(shifts))):
        reason, bad = draw(st.sampled_from(sorted(_defects(shifts[i]).items())))
        shifts[i] = bad
        broken[i] = reason
    if not multi:
        # Two users on one shift needs the feature.
        for i, s in enumerate(shifts):
            if i not in broken and not s.is_open_shift and draw(st.booleans()):
                shifts[i] = replace(s, assigned_user_ids=(1, 2))
                broken[i] = ErrorCode.FEATURE_REQUIRED
                break
    return multi, shifts, broken


@settings(max_examples=150, deadline=None)
@given(batch=batches())
def test_batches_are_stored_exactly_or_every_bad_shift_is_named(
    uows: SqlUnitOfWorkFactory, batch: tuple[bool, list[ScheduledShift], dict[int, ErrorCode]]
) -> None:
    multi, drafts, broken = batch
    sched = scheduler(multi)
    if broken:
        with pytest.raises(DomainError) as info:
            use_cases.create_shifts(uows, SetClock(), 1, sched.id, drafts)
        named: dict[int, set[ErrorCode]] = {}
        for v in info.value.violations:
            index = int(v.field.split("[", 1)[1].split("]", 1)[0])
            named.setdefault(index, set()).add(v.reason)
        assert set(named) == set(broken)
        for i, reason in broken.items():
            assert reason in named[i], (i, reason, named[i])
        return
    created = use_cases.create_shifts(uows, SetClock(), 1, sched.id, drafts, created_by=3)
    with uows(readonly=True) as uow:
        for sent, got in zip(drafts, created, strict=True):
            assert uow.shifts.get(got.id) == got
            for name in (
                "start_time",
                "end_time",
                "title",
                "job_id",
                "assigned_user_ids",
                "location",
                "notes",
                "statuses",
                "shift_layers",
                "shift_source",
                "custom_fields",
                "has_details",
            ):
                assert getattr(got, name) == getattr(sent, name), name
            for name in ("timezone", "color", "open_spots", "is_require_admin_approval"):
                given_value = getattr(sent, name)
                if given_value is not None:
                    assert getattr(got, name) == given_value, name
            _check_breaks(got)


def _check_breaks(s: ScheduledShift) -> None:
    assert s.timezone is not None
    zone = ZoneInfo(s.timezone)
    for b in s.breaks:
        assert b.end_ts - b.start_ts == b.duration_min * 60
        local = datetime.fromtimestamp(b.start_ts, zone)
        on_wall = local.hour * 60 + local.minute
        # The wall time is the requested one unless a DST gap skipped it.
        if on_wall != b.start_minute:
            naive = local.replace(tzinfo=None)
            gap = datetime.combine(naive.date(), datetime.min.time()).replace(
                hour=b.start_minute // 60, minute=b.start_minute % 60
            )
            assert (naive - gap).total_seconds() in (1800, 3600), (s, b)
        inside = s.start_time <= b.start_ts < s.end_time
        first_day = datetime.fromtimestamp(s.start_time, zone).date()
        assert inside or local.date() == first_day
