"""Random live punches, time activities, corrections and deletions for several
users, through the real use cases and store, against a reference model of
each user's intervals: ListTimeActivities lists exactly the model's
activities, none overlap, and the totals are the sums of the parts."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from geopunch.domain.errors import DomainError
from geopunch.domain.models import Job, ManualBreakType, TimeClock
from geopunch.domain.punches import Activity, ActivityKind, PunchCommand, PunchKind
from geopunch.domain.timesheets import (
    BreakDraft,
    Correction,
    ListQuery,
    PointDraft,
    ShiftDraft,
    UserActivities,
)
from geopunch.service import punches, timesheets
from tests.helpers import AccountStore, SetClock, seeded_sqlite

TC = 7
USERS = (10, 11, 12)
T0 = 1_800_000_000
WINDOW = (T0 - 4 * 86_400, T0 + 30 * 86_400)
INF = 2**62


@dataclass
class Span:
    kind: ActivityKind
    start: int
    end: int | None
    modified_at: int
    paid: bool = False


@dataclass
class Model:
    spans: dict[str, Span] = field(default_factory=dict)

    def open(self) -> tuple[str, Span] | None:
        return next(((i, s) for i, s in self.spans.items() if s.end is None), None)

    def clashes(self, start: int, end: int, leave_out: str = "") -> bool:
        return any(
            start < (s.end if s.end is not None else INF) and s.start < end
            for i, s in self.spans.items()
            if i != leave_out and (s.end is None or s.end > s.start)
        )


CLOCK = TimeClock(
    id=TC,
    name="model",
    timezone="America/New_York",
    jobs=(Job("j1"),),
    user_ids=frozenset(USERS),
    manual_breaks_enabled=True,
    manual_break_types=(ManualBreakType("rest", "Rest", is_paid=True), ManualBreakType("nap", "")),
)


users = st.sampled_from(USERS)


class TimesheetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = TemporaryDirectory()
        self.engine = seeded_sqlite(Path(self.tmp.name) / "ts.db", [CLOCK])
        self.uows = AccountStore(self.engine)
        self.clock = SetClock(T0)
        self.model = {u: Model() for u in USERS}
        self.loop = asyncio.new_event_loop()

    def teardown(self) -> None:
        self.loop.close()
        self.engine.dispose()
        self.tmp.cleanup()

    def now(self) -> int:
        return int(self.clock.now())

    def keep(self, a: Activity) -> None:
        paid = a.break_type_id == "rest"
        end = a.end.timestamp if a.end is not None else None
        self.model[a.user_id].spans[a.id] = Span(
            a.kind, a.start.timestamp, end, a.modified_at, paid
        )

    def reread_versions(self, user: int) -> None:
        """Correcting or deleting a shift re-attributes the breaks that start
        where it ended, which stores them again (a new ``modified_at``): take
        the versions from the store, as a client reads before it corrects."""
        query = ListQuery(TC, *WINDOW, user_ids=(user,), page_size=10_000)
        page = timesheets.list_time_activities(self.uows, None, self.clock, 1, query)
        for a in page.activities:  # flat rows
            span = self.model[user].spans.get(a.id)
            if span is not None:
                span.modified_at = a.modified_at

    # --- rules -------------------------------------------------------------------------
    @rule(seconds=st.integers(0, 6 * 3600))
    def time_passes(self, seconds: int) -> None:
        self.clock.t += seconds

    @rule(user=users, kind=st.sampled_from(list(PunchKind)))
    def live_punch(self, user: int, kind: PunchKind) -> None:
        m = self.model[user]
        current = m.open()
        state = current[1].kind if current else None
        expected = {
            PunchKind.CLOCK_IN: state is None,
            PunchKind.CLOCK_OUT: state is ActivityKind.SHIFT,
            PunchKind.START_BREAK: state is not ActivityKind.BREAK,
            PunchKind.END_BREAK: state is ActivityKind.BREAK,
        }[kind]
        cmd = PunchCommand(kind, TC, user, manual_break_id="rest")
        try:
            outcome = self.loop.run_until_complete(
                punches.punch(punches.run_alone(self.uows), None, self.clock, 1, cmd, "r")
            )
        except DomainError as err:
            assert not expected, (kind, err)
            return
        assert expected, kind
        result = outcome.result
        assert result is not None
        for a in (result.activity, result.closed_shift, result.resumed_shift):
            if a is not None:
                self.keep(a)

    @rule(
        user=users,
        ago=st.integers(0, 3 * 86_400),
        length=st.integers(1, 3 * 3600),
        is_break=st.booleans(),
        paid=st.booleans(),
    )
    def record(self, user: int, ago: int, length: int, is_break: bool, paid: bool) -> None:
        start = self.now() - ago
        end = start + length
        expected = end <= self.now() and not self.model[user].clashes(start, end)
        points = PointDraft(start), PointDraft(end)
        group = (
            UserActivities(user, (), (BreakDraft("rest" if paid else "nap", *points),))
            if is_break
            else UserActivities(user, (ShiftDraft(*points),))
        )
        try:
            (made,) = timesheets.create_time_activities(self.uows, None, self.clock, 1, TC, [group])
        except DomainError as err:
            assert not expected, err
            return
        assert expected, (start, end)
        self.keep(made)

    @rule(data=st.data(), shift_by=st.integers(-7200, 7200), length=st.integers(1, 7200))
    def correct(self, data: st.DataObject, shift_by: int, length: int) -> None:
        done = [
            (u, i, s) for u in USERS for i, s in self.model[u].spans.items() if s.end is not None
        ]
        if not done:
            return
        user, activity_id, span = data.draw(st.sampled_from(done))
        stale = data.draw(st.sampled_from([False, False, False, True]))
        start = span.start + shift_by
        end = start + length
        expected = (
            not stale
            and end <= self.now()
            and not self.model[user].clashes(start, end, leave_out=activity_id)
        )
        change = Correction(
            activity_id,
            span.modified_at - 1 if stale else span.modified_at,
            PointDraft(start),
            PointDraft(end),
            manual_break_id=""
            if span.kind is ActivityKind.SHIFT
            else ("rest" if span.paid else "nap"),
        )
        try:
            fixed = timesheets.update_time_activity(self.uows, None, self.clock, 1, TC, change)
        except DomainError as err:
            assert not expected, err
            if stale:
                assert err.code.value == "STALE_MODIFIED_AT"
            return
        assert expected, (start, end)
        self.keep(fixed)
        self.reread_versions(user)

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        done = [
            (u, i, s) for u in USERS for i, s in self.model[u].spans.items() if s.end is not None
        ]
        if not done:
            return
        user, activity_id, span = data.draw(st.sampled_from(done))
        timesheets.delete_time_activity(
            self.uows, None, self.clock, 1, TC, activity_id, span.modified_at
        )
        del self.model[user].spans[activity_id]
        self.reread_versions(user)

    # --- what the read side says -----------------------------------------------------------
    @invariant()
    def listing_matches_the_model(self) -> None:
        now = self.now()
        query = ListQuery(TC, *WINDOW, page_size=5, include_totals=True)
        page = timesheets.list_time_activities(self.uows, None, self.clock, 1, query)
        assert page.totals is not None
        totals = {t.user_id: t for t in page.totals.per_user()}
        listed = [r.activity() for r in page.activities]
        while page.next_page_token:
            query = ListQuery(TC, *WINDOW, page_size=5, page_token=page.next_page_token)
            page = timesheets.list_time_activities(self.uows, None, self.clock, 1, query)
            assert page.totals is None
            listed += [r.activity() for r in page.activities]
        got = {
            a.id: (a.user_id, a.start.timestamp, a.end.timestamp if a.end else None) for a in listed
        }
        want = {i: (u, s.start, s.end) for u in USERS for i, s in self.model[u].spans.items()}
        assert got == want
        starts = [(a.start.timestamp, a.id) for a in listed]
        assert starts == sorted(starts)
        for u in USERS:
            # What the store holds never overlaps (empty live spans aside).
            spans = sorted(
                (a.start.timestamp, a.end.timestamp if a.end is not None else INF)
                for a in listed
                if a.user_id == u and (a.end is None or a.end.timestamp > a.start.timestamp)
            )
            assert all(e1 <= s2 for (_, e1), (s2, _) in itertools.pairwise(spans))
            sums = [0, 0, 0]
            for s in self.model[u].spans.values():
                lo, hi = (
                    max(s.start, WINDOW[0]),
                    min(s.end if s.end is not None else now, WINDOW[1]),
                )
                column = 0 if s.kind is ActivityKind.SHIFT else 1 if s.paid else 2
                sums[column] += max(0, hi - lo)
            t = totals.get(u)
            got_sums = [t.worked_s, t.paid_break_s, t.unpaid_break_s] if t else [0, 0, 0]
            assert got_sums == sums, u
            if t is not None:
                assert sum(d.worked_s for d in t.days) == t.worked_s
                assert sum(d.paid_break_s + d.unpaid_break_s for d in t.days) == (
                    t.paid_break_s + t.unpaid_break_s
                )


TimesheetMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None
)
test_timesheets_match_the_model = TimesheetMachine.TestCase
