"""Random punch sequences through the real use cases and store, against a tiny model."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from geopunch.adapters.db.store import (
    GroupCommitter,
)
from geopunch.domain.errors import DomainError
from geopunch.domain.models import Job, ManualBreakType, TimeClock
from geopunch.domain.punches import ActivityKind, PunchCommand, PunchKind
from geopunch.service import punches
from tests.helpers import AccountStore, SetClock, seeded_sqlite

CLOCKS = (1, 2)
USERS = (10,)
T0 = 1_800_000_000


@dataclass
class Open:
    kind: ActivityKind
    start: int
    job: str | None
    break_type: str | None = None
    from_shift: bool = False


@dataclass
class UserModel:
    open: Open | None = None
    last_end: int | None = None
    completed: list[tuple[int, int]] = field(default_factory=list)


def time_clock(i: int) -> TimeClock:
    return TimeClock(
        id=i,
        name=f"c{i}",
        timezone="UTC",
        jobs=(Job("j1"), Job("j2")),
        user_ids=frozenset(USERS),
        manual_breaks_enabled=True,
        manual_break_types=(
            ManualBreakType("lunch", "Lunch", True, 600),
            ManualBreakType("rest", "Rest"),
        ),
    )


# Boundaries get drawn often: the undo window, the mandatory minimum, the 12-hour limit.
EDGES = [0, 1, 44, 45, 46, 599, 600, 601, 43_199, 43_200, 43_201]
# Mostly live punches or recent retroactive ones, so that sequences get far.
offsets = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.sampled_from(EDGES),
    st.integers(0, 600),
    st.integers(-30, 13 * 3600),
)
steps = st.one_of(st.sampled_from([0, 1, 45, 46, 554, 555, 600]), st.integers(0, 4000))


class PunchMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = TemporaryDirectory()
        # Each example starts from a copy of one migrated and seeded store:
        # migrating afresh per example cost most of this test's time.
        self.engine = seeded_sqlite(Path(self.tmp.name) / "sm.db", [time_clock(i) for i in CLOCKS])
        self.uows = AccountStore(self.engine)
        self.clock = SetClock(T0)
        self.model = {(c, u): UserModel() for c in CLOCKS for u in USERS}
        # Every other punch goes through the server's group commit (pieces run
        # without savepoints on SQLite), the others in a transaction of their own.
        self.committer = GroupCommitter(self.uows)
        self.loop = asyncio.new_event_loop()
        self.punches = 0

    def teardown(self) -> None:
        self.committer.close()
        self.loop.close()
        self.engine.dispose()
        self.tmp.cleanup()

    # --- the model -------------------------------------------------------------------------
    def expect(self, cmd: PunchCommand) -> str | None:
        """The reason the service must give, or None for success (and update the model)."""
        now = int(self.clock.now())
        ts = now if cmd.timestamp is None else cmd.timestamp
        if ts > now:
            return "INVALID_TIMESTAMP_FUTURE"
        if now - ts > 12 * 3600:
            return "INVALID_TIMESTAMP_TOO_OLD"
        if cmd.kind is PunchKind.START_BREAK and cmd.manual_break_id not in ("lunch", "rest"):
            return "MANUAL_BREAK_NOT_FOUND"
        if cmd.kind is PunchKind.CLOCK_IN and cmd.job_id not in ("", "j1", "j2"):
            return "JOB_NOT_FOUND"
        m = self.model[(cmd.time_clock_id, cmd.user_id)]
        cur = m.open
        after_history = m.last_end is None or ts >= m.last_end

        def close(end: int) -> None:
            assert m.open is not None
            m.completed.append((m.open.start, end))
            m.last_end = max(m.last_end or end, end)
            m.open = None

        def too_early(start: int) -> bool:
            """An end at or before the start; a live punch may share its second."""
            return ts < start or (ts == start and cmd.timestamp is not None)

        if cmd.kind is PunchKind.CLOCK_IN:
            if cur is not None:
                return "ALREADY_CLOCKED_IN" if cur.kind is ActivityKind.SHIFT else "OPEN_BREAK"
            if not after_history:
                return "OVERLAPS_COMPLETED_ACTIVITY"
            m.open = Open(ActivityKind.SHIFT, ts, cmd.job_id or None)
            return None
        if cmd.kind is PunchKind.CLOCK_OUT:
            if cur is None or cur.kind is not ActivityKind.SHIFT:
                return "NO_OPEN_SHIFT"
            if too_early(cur.start):
                return "INVALID_TIMESTAMP_BEFORE_CLOCK_IN"
            close(ts)
            return None
        if cmd.kind is PunchKind.START_BREAK:
            if cur is not None and cur.kind is ActivityKind.BREAK:
                return "ALREADY_ON_BREAK"
            if cur is not None and too_early(cur.start):
                return "INVALID_TIMESTAMP_BEFORE_CLOCK_IN"
            if cur is None and not after_history:
                return "OVERLAPS_COMPLETED_ACTIVITY"
            job = cur.job if cur is not None else None
            if cur is not None:
                close(ts)
            m.open = Open(ActivityKind.BREAK, ts, job, cmd.manual_break_id, cur is not None)
            return None
        if cur is None or cur.kind is not ActivityKind.BREAK:
            return "NO_OPEN_BREAK"
        if too_early(cur.start):
            return "INVALID_TIMESTAMP_BEFORE_START"
        if cur.break_type == "lunch" and 45 < ts - cur.start < 600:
            return "MANDATORY_BREAK_TOO_SHORT"
        brk = cur
        close(ts)
        if cmd.is_resume_shift is not False and brk.from_shift:
            m.open = Open(ActivityKind.SHIFT, ts, brk.job)
        return None

    def run(self, cmd: PunchCommand) -> None:
        expected = self.expect(cmd)
        try:
            self.punches += 1
            # Every other punch goes through the group committer, as the server's do.
            runner = self.committer.submit if self.punches % 2 else punches.run_alone(self.uows)
            self.loop.run_until_complete(punches.punch(runner, None, self.clock, 1, cmd, "rid"))
            got = None
        except DomainError as err:
            got = err.code.value
        assert got == expected, (cmd, got, expected)

    # --- rules ---------------------------------------------------------------------------------
    @rule(seconds=steps)
    def time_passes(self, seconds: int) -> None:
        self.clock.t += seconds

    def _ts(self, offset: int | None) -> int | None:
        return None if offset is None else int(self.clock.now()) - offset

    @rule(
        c=st.sampled_from(CLOCKS),
        u=st.sampled_from(USERS),
        off=offsets,
        job=st.sampled_from(["", "j1", "j2", "j1", "nope"]),
    )
    def clock_in(self, c: int, u: int, off: int | None, job: str) -> None:
        self.run(PunchCommand(PunchKind.CLOCK_IN, c, u, timestamp=self._ts(off), job_id=job))

    @rule(c=st.sampled_from(CLOCKS), u=st.sampled_from(USERS), off=offsets)
    def clock_out(self, c: int, u: int, off: int | None) -> None:
        self.run(PunchCommand(PunchKind.CLOCK_OUT, c, u, timestamp=self._ts(off)))

    @rule(
        c=st.sampled_from(CLOCKS),
        u=st.sampled_from(USERS),
        off=offsets,
        kind=st.sampled_from(["lunch", "rest", "lunch", "rest", "gone"]),
    )
    def start_break(self, c: int, u: int, off: int | None, kind: str) -> None:
        self.run(
            PunchCommand(PunchKind.START_BREAK, c, u, timestamp=self._ts(off), manual_break_id=kind)
        )

    @rule(
        c=st.sampled_from(CLOCKS),
        u=st.sampled_from(USERS),
        off=offsets,
        resume=st.sampled_from([None, True, False]),
    )
    def end_break(self, c: int, u: int, off: int | None, resume: bool | None) -> None:
        self.run(
            PunchCommand(PunchKind.END_BREAK, c, u, timestamp=self._ts(off), is_resume_shift=resume)
        )

    # Targeted rules: act on a user in the state the punch needs, so that long
    # valid sequences (shift -> break -> resumed shift -> ...) are common.
    def _pick(self, data: st.DataObject, kind: ActivityKind | None) -> tuple[int, int] | None:
        keys = [k for k, m in self.model.items() if (m.open.kind if m.open else None) is kind]
        return data.draw(st.sampled_from(keys)) if keys else None

    @rule(data=st.data(), job=st.sampled_from(["", "j1", "j2"]))
    def idle_user_clocks_in(self, data: st.DataObject, job: str) -> None:
        key = self._pick(data, None)
        if key:
            self.run(PunchCommand(PunchKind.CLOCK_IN, *key, job_id=job))

    @rule(
        data=st.data(), kind=st.sampled_from(["lunch", "rest"]), off=st.sampled_from([None, 0, 30])
    )
    def user_on_shift_takes_a_break(self, data: st.DataObject, kind: str, off: int | None) -> None:
        key = self._pick(data, ActivityKind.SHIFT)
        if key:
            self.run(
                PunchCommand(
                    PunchKind.START_BREAK, *key, timestamp=self._ts(off), manual_break_id=kind
                )
            )

    @rule(
        data=st.data(),
        resume=st.sampled_from([None, True, False]),
        off=st.sampled_from([None, 0, 10]),
    )
    def user_on_break_ends_it(
        self, data: st.DataObject, resume: bool | None, off: int | None
    ) -> None:
        key = self._pick(data, ActivityKind.BREAK)
        if key:
            self.run(
                PunchCommand(
                    PunchKind.END_BREAK, *key, timestamp=self._ts(off), is_resume_shift=resume
                )
            )

    @rule(data=st.data())
    def user_on_shift_clocks_out(self, data: st.DataObject) -> None:
        key = self._pick(data, ActivityKind.SHIFT)
        if key:
            self.run(PunchCommand(PunchKind.CLOCK_OUT, *key))

    # --- invariants on the store -------------------------------------------------------------
    @invariant()
    def store_agrees_and_is_consistent(self) -> None:
        with self.uows(readonly=True) as uow:
            for (c, u), m in self.model.items():
                acts = uow.activities.list_for(c, u)
                open_ = [a for a in acts if a.end is None]
                assert len(open_) <= 1
                assert (
                    (open_[0].kind, open_[0].start.timestamp)
                    == ((m.open.kind, m.open.start) if m.open else (None, None))
                    if open_
                    else m.open is None
                )
                closed = sorted((a.start.timestamp, a.end.timestamp) for a in acts if a.end)
                assert closed == sorted(m.completed)
                for (_, e1), (s2, _) in itertools.pairwise(closed):
                    assert e1 <= s2  # half-open intervals never overlap
                assert all(e >= s for s, e in closed)  # a live end may share its start's second


PunchMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestPunchLifecycle = PunchMachine.TestCase
