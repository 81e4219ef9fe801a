"""Totals cut at the time clock's midnights as arrays are the totals of each
activity cut one by one with datetime arithmetic.

``totals`` computes a window's local midnights once and sums every activity's
seconds per user, day and column with numpy. The reference here walks each
activity from midnight to midnight in the zone, in zones with daylight
saving (whole and half hours), odd offsets and a skipped calendar day.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from geopunch.domain.models import ManualBreakType, TimeClock
from geopunch.domain.punches import WORKED, span
from geopunch.domain.timesheets import DayTotals, UserTotals, totals

ZONES = (
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",  # daylight saving of half an hour
    "Asia/Kathmandu",  # +05:45
    "America/St_Johns",
    "Pacific/Apia",  # 2011-12-30 never happened there
)
BREAKS = (ManualBreakType("paid", "Paid", is_paid=True), ManualBreakType("unpaid", "Unpaid"))


def reference(
    zone: ZoneInfo, spans: list[tuple[int, str, str | None, int, int | None]], start: int,
    end: int, now: int,
) -> list[UserTotals]:  # fmt: skip
    sums: dict[int, dict[date, list[int]]] = {}
    for user, kind, break_id, s, e in spans:
        lo, hi = max(s, start), min(e if e is not None else now, end)
        column = 0 if kind == "shift" else 1 if break_id == "paid" else 2
        per_day = sums.setdefault(user, {})
        while lo < hi:
            day = datetime.fromtimestamp(lo, UTC).astimezone(zone).date()
            midnight = int(datetime.combine(day + timedelta(days=1), time(0), zone).timestamp())
            cut = min(hi, midnight)
            per_day.setdefault(day, [0, 0, 0])[column] += cut - lo
            lo = cut
    out = []
    for user in sorted(sums):
        days = tuple(DayTotals(d, *v) for d, v in sorted(sums[user].items()))
        out.append(
            UserTotals(
                user,
                sum(d.worked_s for d in days),
                sum(d.paid_break_s for d in days),
                sum(d.unpaid_break_s for d in days),
                days,
            )
        )
    return out


_T0 = 1_300_000_000  # 2011, before Apia's skipped day
_activity = st.tuples(
    # Users close together, or far apart (ids ranked by sorting, not by a table).
    st.one_of(st.integers(1, 5), st.sampled_from([2**31, 2**53 - 1])),
    st.sampled_from([("shift", None), ("break", "paid"), ("break", "unpaid")]),
    st.integers(0, 95 * 86_400),  # start after the first window may begin
    st.one_of(st.none(), st.integers(1, 30 * 3600)),  # open, or how long
)


@settings(max_examples=200, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    base=st.integers(_T0, _T0 + 20 * 365 * 86_400),
    offset=st.integers(0, 10 * 86_400),
    width=st.integers(1, 92 * 86_400),
    activities=st.lists(_activity, max_size=40),
    now_after=st.integers(0, 100 * 86_400),
    chunk=st.integers(1, 7),
)
def test_totals_match_cutting_each_activity(
    zone: str,
    base: int,
    offset: int,
    width: int,
    activities: list[tuple[int, tuple[str, str | None], int, int | None]],
    now_after: int,
    chunk: int,
) -> None:
    spans = [
        (user, kind, break_id, base + s, None if length is None else base + s + length)
        for user, (kind, break_id), s, length in activities
    ]
    start = base + offset
    end, now = start + width, base + now_after
    tc = TimeClock(1, "t", zone, manual_breaks_enabled=True, manual_break_types=BREAKS)
    # As the store gives them: each break's column known, open ones ending now.
    read = np.array([span(*a, paid_breaks={"paid"}, now=now) for a in spans], np.int64)
    chunks = [read[i : i + chunk].reshape(-1, 4) for i in range(0, len(read), chunk)]
    summed = totals(tc, chunks, start, end).per_user()
    assert summed == reference(ZoneInfo(zone), spans, start, end, now)


def test_apia_has_no_december_30_2011() -> None:
    zone = ZoneInfo("Pacific/Apia")
    start = int(datetime(2011, 12, 29, 12, tzinfo=zone).timestamp())
    end = int(datetime(2012, 1, 2, tzinfo=zone).timestamp())
    tc = TimeClock(1, "t", "Pacific/Apia")
    only = np.array([(1, WORKED, start, start + 24 * 3600)], np.int64)
    (t,) = totals(tc, [only], start, end).per_user()
    assert [(d.day, d.worked_s) for d in t.days] == [
        (date(2011, 12, 29), 12 * 3600),
        (date(2011, 12, 31), 12 * 3600),
    ]
