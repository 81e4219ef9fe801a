"""Concurrent writers of one user's activities take turns instead of
deadlocking, and the seq locks of the fence index's change feed and of the
event log are the last locks a transaction takes: its index changes and
events are written at the commit.

PostgreSQL checks the no-overlap exclusion constraint after inserting a row,
so two transactions inserting overlapping rows each wait for the other, and
one was its deadlock detector's victim a second later; on the group committer
that second stalled every punch of the batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from sqlalchemy import Engine, text

from geopunch.adapters.db.prepared import MOST_OWN_TURNS
from geopunch.adapters.db.store import SqlUnitOfWork
from geopunch.domain.errors import ConcurrentChange
from geopunch.domain.events import Event
from geopunch.domain.models import Job, TimeClock
from geopunch.domain.punches import Activity, ActivityKind, PunchPoint
from tests.helpers import AccountStore

TC = TimeClock(id=77, name="Yard", timezone="UTC", jobs=(Job("a", "A"),))


def _shift(aid: str, user: int, start: int, end: int | None) -> Activity:
    return Activity(
        id=aid,
        time_clock_id=TC.id,
        user_id=user,
        kind=ActivityKind.SHIFT,
        start=PunchPoint(start, "UTC"),
        end=None if end is None else PunchPoint(end, "UTC"),
        job_id="a",
        created_at=start,
        modified_at=start,
    )


def _postgres_only(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: nothing to take turns on")


def _blocked_or_done(engine: Engine, pid: list[int], thread: threading.Thread) -> None:
    """Wait until ``thread`` has finished or its backend (``pid``) waits on a lock."""
    deadline = time.monotonic() + 10
    with engine.connect() as conn:
        while thread.is_alive() and time.monotonic() < deadline:
            if pid:
                waiting = conn.execute(
                    text("SELECT count(*) FROM pg_locks WHERE NOT granted AND pid = :pid"),
                    {"pid": pid[0]},
                ).scalar_one()
                if waiting:
                    return
            conn.rollback()
            time.sleep(0.01)
    assert time.monotonic() < deadline, "the other writer neither finished nor waited"


def _in_thread(
    uows: AccountStore, work: Callable[[SqlUnitOfWork], None]
) -> tuple[threading.Thread, list[int], list[BaseException]]:
    """``work(uow)`` then a commit, in a thread; its backend pid and failure are noted."""
    pid: list[int] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            with uows() as uow:
                conn = uow._conn
                assert conn is not None
                pid.append(int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one()))
                work(uow)
                uow.commit()
        except BaseException as exc:  # the test reads it
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, pid, failed


def _importing(engine: Engine, uows: AccountStore, shifts: list[Activity]) -> Callable[[], None]:
    """Import ``shifts`` in another transaction until it has finished or
    waits; the check returned joins it and asserts that it lost a race to
    the rows committed meanwhile, and was no deadlock's victim."""
    thread, pid, failed = _in_thread(uows, lambda uow: uow.activities.add_many(shifts))
    _blocked_or_done(engine, pid, thread)

    def lost_race() -> None:
        thread.join(10)
        assert len(failed) == 1 and isinstance(failed[0], ConcurrentChange), failed
        assert "40P01" not in str(failed[0])

    return lost_race


def test_overlapping_writers_of_the_same_users_take_turns(engine: Engine) -> None:
    """A batch holds user 1 and then writes user 2; an import writing users 2
    and 1 meanwhile waits for user 1 before writing anything, instead of
    holding user 2 against the batch."""
    _postgres_only(engine)
    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.commit()
    with uows() as batch:
        batch.activities.add(_shift("b-1", 1, 1000, None))
        batch.events.append([Event("timeActivityCreated", 1000, {"n": 1})])
        lost_race = _importing(
            engine, uows, [_shift("i-2", 2, 100, 900), _shift("i-1", 1, 1500, 1800)]
        )
        # Overlaps the import's row for user 2: this waited for the import,
        # which waited for this transaction, until one was a deadlock's victim.
        batch.activities.add(_shift("b-2", 2, 500, None))
        batch.commit()
    lost_race()  # the import then met the committed rows
    with uows(readonly=True) as uow:
        assert [a.id for a in uow.activities.list_for(TC.id, 1)] == ["b-1"]
        assert [a.id for a in uow.activities.list_for(TC.id, 2)] == ["b-2"]
        assert [e.payload for e in uow.events.after(0)] == [{"n": 1}]


def test_a_transaction_with_events_does_not_hold_the_log_against_other_writers(
    engine: Engine,
) -> None:
    """A batch appended an event and then wrote a user that an import had
    written and was committing with its own event: the import commits, and
    the batch meets its row as a lost race."""
    _postgres_only(engine)
    uows = AccountStore(engine)
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.commit()

    def imports(uow: SqlUnitOfWork) -> None:
        uow.activities.add_many([_shift("i-2", 2, 100, 900)])
        uow.events.append([Event("timeActivityCreated", 100, {"n": 2})])

    with uows() as batch:
        batch.activities.add(_shift("b-1", 1, 1000, None))
        batch.events.append([Event("clockedIn", 1000, {"n": 1})])
        importer, pid, failed = _in_thread(uows, imports)
        _blocked_or_done(engine, pid, importer)
        with pytest.raises(ConcurrentChange) as lost:
            batch.activities.add(_shift("b-2", 2, 500, None))
        assert "40P01" not in str(lost.value)
    importer.join(10)
    assert failed == []
    with uows(readonly=True) as uow:
        assert [e.payload for e in uow.events.after(0)] == [{"n": 2}]
        assert uow.activities.list_for(TC.id, 1) == []


def test_events_are_written_at_the_commit_and_undone_with_their_savepoint(
    engine: Engine,
) -> None:
    uows = AccountStore(engine)
    with uows() as uow:
        before = uow.changes()
        uow.events.append([Event("clockedIn", 1, {"n": 1})])
        after = uow.changes()
        # Not written yet, but a change all the same (the group committer
        # decides by this whether a failed piece left anything to undo).
        assert before is not None and after == before + 1
        with pytest.raises(RuntimeError), uow.savepoint():
            uow.events.append([Event("clockedIn", 2, {"n": 2})])
            raise RuntimeError("this piece fails")
        with uow.savepoint():
            uow.events.append([Event("clockedOut", 3, {"n": 3})])
        uow.commit()
    with uows() as uow:
        uow.events.append([Event("clockedIn", 4, {"n": 4})])  # never committed
    with uows(readonly=True) as uow:
        stored = uow.events.after(0)
    assert [e.payload for e in stored] == [{"n": 1}, {"n": 3}]
    assert [e.seq for e in stored] == sorted(e.seq for e in stored)
    assert all(e.recorded_at is not None for e in stored)


def test_index_changes_are_written_at_the_commit_and_undone_with_their_savepoint(
    engine: Engine,
) -> None:
    uows = AccountStore(engine)
    with uows() as uow:
        before = uow.changes()
        first = uow.index_changes.note(5)
        assert before is not None and uow.changes() == before + 1  # a change, not yet written
        assert first.seq == 0 and uow.index_changes.after(0) == []
        with pytest.raises(RuntimeError), uow.savepoint():
            uow.index_changes.note(6)
            raise RuntimeError("this piece fails")
        with uow.savepoint():
            last = uow.index_changes.note(7)
        uow.commit()
    with uows() as uow:
        uow.index_changes.note(8)  # never committed
    with uows(readonly=True) as uow:
        feed = uow.index_changes.after(0)
    assert [(seq, tc) for seq, _, tc in feed] == [(first.seq, 5), (last.seq, 7)]
    assert 0 < first.seq < last.seq


def test_closing_a_shift_is_a_turn_of_its_user(engine: Engine) -> None:
    """A batch closed a user's shift and then opened the next one; an import
    of an overlapping shift meanwhile waits for the user's turn before
    writing, instead of holding the user against the batch."""
    _postgres_only(engine)
    uows = AccountStore(engine)
    open_shift = _shift("s-1", 1, 100, None)
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.activities.add(open_shift)
        uow.commit()
    with uows() as batch:
        batch.activities.close(open_shift, PunchPoint(200, "UTC"), 200)
        lost_race = _importing(engine, uows, [_shift("i-1", 1, 150, 180)])
        batch.activities.add(_shift("s-2", 1, 300, None))
        batch.commit()
    lost_race()
    with uows(readonly=True) as uow:
        assert uow.activities.list_for(TC.id, 1) == [
            replace(open_shift, end=PunchPoint(200, "UTC"), modified_at=200),
            _shift("s-2", 1, 300, None),
        ]


def _advisory_locks(uow: SqlUnitOfWork) -> int:
    conn = uow._conn
    assert conn is not None
    return int(
        conn.execute(
            text(
                "SELECT count(*) FROM pg_locks "
                "WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
        ).scalar_one()
    )


def test_a_large_import_takes_its_clocks_turn_with_one_lock(engine: Engine) -> None:
    """A lock a user would let a few concurrent imports of a thousand users
    fill PostgreSQL's lock table; past MOST_OWN_TURNS users of a clock a
    call takes the whole clock's turn instead, which every writer of one of
    its users waits for."""
    _postgres_only(engine)
    uows = AccountStore(engine)
    other = TimeClock(id=78, name="Other", timezone="UTC", jobs=(Job("a", "A"),))
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.time_clocks.add(other)
        uow.commit()
    many = range(1, MOST_OWN_TURNS + 2)
    with uows() as big:
        big.activities.add_many([_shift(f"i-{u}", u, 100, 200) for u in many])
        assert _advisory_locks(big) == 1
        # Its later writes on the clock need no lock of their own.
        big.activities.add(_shift("i-open", MOST_OWN_TURNS + 5, 300, None))
        assert _advisory_locks(big) == 1
        # A user of another clock: that clock's lock, shared, and the user's.
        big.activities.add(replace(_shift("o-1", 1, 100, 200), time_clock_id=other.id))
        assert _advisory_locks(big) == 3
        lost_race = _importing(engine, uows, [_shift("p-5", 5, 150, 180)])
        big.commit()
    lost_race()  # it waited for the import, then met its rows
    with uows(readonly=True) as uow:
        assert [a.id for a in uow.activities.list_for(TC.id, 5)] == ["i-5"]


def test_closing_many_shifts_takes_the_turns_at_once(engine: Engine) -> None:
    """A trail's automatic clock-outs of many users of one clock take the
    clock's turn alone, before any of the closes."""
    _postgres_only(engine)
    uows = AccountStore(engine)
    users = range(1, MOST_OWN_TURNS + 2)
    with uows() as uow:
        uow.time_clocks.add(TC)
        for u in users:
            uow.activities.add(_shift(f"s-{u}", u, 100, None))
        uow.commit()
    with uows(readonly=True) as uow:
        shifts = [uow.activities.list_for(TC.id, u)[0] for u in users]
    with uows() as trail:
        trail.activities.close_many([(s, PunchPoint(200, "UTC"), 200) for s in shifts])
        assert _advisory_locks(trail) == 1
        lost_race = _importing(engine, uows, [_shift("p-3", 3, 150, 180)])
        trail.commit()
    lost_race()
    with uows(readonly=True) as uow:
        assert all(uow.activities.list_for(TC.id, u)[0].end is not None for u in users)


def test_a_transaction_that_noted_an_index_change_does_not_hold_the_feed(engine: Engine) -> None:
    """A batch noted a fence change of one clock and then wrote a user whose
    turn another writer held while noting a change of its own: the feed's
    seq lock is taken at the commits, so the other writer commits and the
    batch follows (the lock taken at the note deadlocked the two)."""
    _postgres_only(engine)
    uows = AccountStore(engine)
    other_clock = replace(TC, id=78, name="Gate")
    with uows() as uow:
        uow.time_clocks.add(TC)
        uow.time_clocks.add(other_clock)
        uow.commit()
    with uows() as batch:
        noted = batch.index_changes.note(other_clock.id)

        def admin_and_punch(uow: SqlUnitOfWork) -> None:
            uow.activities.add(_shift("w-1", 1, 1000, 2000))
            uow.index_changes.note(TC.id)

        thread, pid, failed = _in_thread(uows, admin_and_punch)
        _blocked_or_done(engine, pid, thread)
        batch.activities.add(_shift("b-1", 1, 3000, None))  # waits for the writer's turn
        batch.commit()
    thread.join(10)
    assert failed == []
    with uows(readonly=True) as uow:
        feed = uow.index_changes.after(0)
        assert [a.id for a in uow.activities.list_for(TC.id, 1)] == ["w-1", "b-1"]
    assert [tc for _, _, tc in feed] == [TC.id, other_clock.id]  # in commit order
    assert noted.seq == feed[-1][0]  # drawn at the commit
