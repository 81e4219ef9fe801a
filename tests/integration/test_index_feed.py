"""The index change feed: replicas on one store see each other's time clock and
geofence changes (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
from sqlalchemy import Engine

from geopunch.adapters.db.store import SqlUnitOfWork
from geopunch.domain.accounts import DEFAULT_ACCOUNT as A
from geopunch.domain.locations import FenceRows
from geopunch.domain.models import GeofenceDraft, Job, TimeClock
from geopunch.geo._index import ClockInfo
from geopunch.geo._membership import check_one
from geopunch.geo.engine import AccountFences
from geopunch.service import admin, geofences, index_feed
from geopunch.service.index_feed import follow_index_changes, prune_index_changes
from tests.helpers import AccountStore

TC = TimeClock(id=501, name="Yard", timezone="UTC", jobs=(Job("a", "A"),), user_ids=frozenset({1}))
SITE = (48.0, 11.0)


def _clock(index: AccountFences) -> ClockInfo:
    """What the index holds of ``TC``."""
    snap = index.view(A).snapshot
    at = snap.clock_index(TC.id)
    assert at is not None, "the index does not hold the time clock"
    return snap.clocks[at]


def _inside(index: AccountFences, time_clock_id: int = TC.id) -> bool:
    return bool(check_one(index.view(A).snapshot, *SITE, time_clock_id, None, None).inside)


def test_the_feed_lists_changes_in_commit_order_and_prunes_old_ones(engine: Engine) -> None:
    uows = AccountStore(engine)
    with uows(readonly=True) as uow:
        assert uow.index_changes.last() == 0 and uow.index_changes.after(0) == []
    for tc_id in (7, 8, 7):
        with uows() as uow:
            uow.index_changes.note(tc_id)
            uow.commit()
    with uows() as uow:
        uow.index_changes.note(9)  # rolled back: never listed
    with uows(readonly=True) as uow:
        changes = uow.index_changes.after(0)
        assert [(a, tc) for _, a, tc in changes] == [(A, 7), (A, 8), (A, 7)]
        assert [c[0] for c in changes] == sorted(c[0] for c in changes)
        assert uow.index_changes.last() == changes[-1][0]
        assert uow.index_changes.after(changes[0][0], limit=1) == [changes[1]]
    newest = changes[-1][0]
    assert prune_index_changes(uows, before=0) == 0
    assert prune_index_changes(uows, before=2**62) == 3
    with uows() as uow:
        uow.index_changes.note(10)
        uow.commit()
    with uows(readonly=True) as uow:
        # A pruned feed never hands out a seq a follower has already passed.
        assert [tc for _, _, tc in uow.index_changes.after(newest)] == [10]


def test_a_replica_follows_another_ones_time_clocks_and_geofences(engine: Engine) -> None:
    uows = AccountStore(engine)
    here, there = AccountFences(), AccountFences()  # two processes' indexes on one store
    cursor = 0
    admin.create_time_clock(uows, A, TC, ["a"], assign_id=False, listener=here)
    cursor = follow_index_changes(uows, there, cursor)
    assert there.view(A).snapshot.clock_index(TC.id) is not None

    off = GeofenceDraft("Closed gate", "1 Road", *SITE, is_enabled=False, fence_size_m=300)
    geofences.create_geofences(uows, A, TC.id, [off], listener=here)
    cursor = follow_index_changes(uows, there, cursor)
    assert not _inside(there)  # disabled fences match nothing, followed or not

    draft = GeofenceDraft("Gate", "1 Road", *SITE, fence_size_m=200)
    (made,) = geofences.create_geofences(uows, A, TC.id, [draft], listener=here)
    assert _inside(here) and not _inside(there)
    cursor = follow_index_changes(uows, there, cursor)
    assert _inside(there)
    assert follow_index_changes(uows, there, cursor) == cursor  # nothing new

    more = replace(TC, user_ids=frozenset({1, 2}), jobs=(Job("a", "A"), Job("b", "B")))
    admin.update_time_clock(uows, A, more, ["a", "b"], listener=here)
    cursor = follow_index_changes(uows, there, cursor)
    info = _clock(there)
    assert info.time_clock.user_ids == {1, 2}
    assert _inside(there)  # the fences came along with the settings

    geofences.delete_geofence(uows, A, TC.id, made.id, listener=here)
    cursor = follow_index_changes(uows, there, cursor)
    assert not _inside(there) and not _inside(here)

    # Applying its own changes again leaves a process's index as it was.
    follow_index_changes(uows, here, 0)
    assert not _inside(here)
    assert _clock(here).time_clock == more


def test_a_follower_reads_the_feed_page_by_page(engine: Engine) -> None:
    uows = AccountStore(engine)
    clocks = [replace(TC, id=600 + i) for i in range(5)]
    for tc in clocks:
        admin.create_time_clock(uows, A, tc, ["a"], assign_id=False)
    there = AccountFences()
    page = index_feed.INDEX_CHANGE_PAGE
    index_feed.INDEX_CHANGE_PAGE = 2
    try:
        cursor = follow_index_changes(uows, there, 0)
    finally:
        index_feed.INDEX_CHANGE_PAGE = page
    with uows(readonly=True) as uow:
        assert cursor == uow.index_changes.last()
    assert np.isin([tc.id for tc in clocks], there.view(A).snapshot.sorted_clock_ids).all()


class _CountingUows(AccountStore):
    """Counts the units of work opened."""

    opened = 0

    def __call__(self, *, account: int | None = None, readonly: bool = False) -> SqlUnitOfWork:
        self.opened += 1
        return super().__call__(account=account, readonly=readonly)


def test_a_small_page_is_followed_in_the_unit_of_work_that_read_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What one call of another replica changed is read with the feed's page,
    one snapshot and one connection: how soon a replica sees it. Pages of
    more clocks, or of several accounts, are read again a chunk at a time."""
    uows = _CountingUows(engine)
    there = AccountFences()
    admin.create_time_clock(uows, A, TC, ["a"], assign_id=False)
    draft = GeofenceDraft("Gate", "1 Road", *SITE, fence_size_m=200)
    geofences.create_geofences(uows, A, TC.id, [draft])
    uows.opened = 0
    cursor = follow_index_changes(uows, there, 0)
    assert uows.opened == 1 and _inside(there)

    monkeypatch.setattr(index_feed, "REREAD_CHUNK", 2)
    clocks = [replace(TC, id=700 + i) for i in range(5)]
    for tc in clocks:
        admin.create_time_clock(uows, A, tc, ["a"], assign_id=False)
        geofences.create_geofences(uows, A, tc.id, [draft])
    with uows() as uow:
        other = uow.accounts.create("other").id
        uow.commit()
    admin.create_time_clock(uows, other, TC, ["a"], assign_id=False)
    uows.opened = 0
    cursor = follow_index_changes(uows, there, cursor)
    assert uows.opened == 1 + 3 + 1  # the page, three chunks of A's five, other's one
    assert all(_inside(there, tc.id) for tc in clocks)
    assert there.view(other).snapshot.clock_index(TC.id) is not None
    uows.opened = 0
    assert follow_index_changes(uows, there, cursor) == cursor and uows.opened == 1


class _CountingFences(AccountFences):
    """Counts the time clocks the follower reads again (it reports no seq)."""

    def __init__(self) -> None:
        super().__init__()
        self.reread: list[int] = []

    def time_clocks_read_again(
        self, account: int, time_clocks: Sequence[TimeClock], fences: FenceRows
    ) -> None:
        self.reread.extend(tc.id for tc in time_clocks)
        super().time_clocks_read_again(account, time_clocks, fences)


def test_a_follower_skips_what_its_own_writers_reported_and_reads_the_rest(
    engine: Engine,
) -> None:
    uows = AccountStore(engine)
    here, there = _CountingFences(), AccountFences()
    other = replace(TC, id=502)
    admin.create_time_clock(uows, A, TC, ["a"], assign_id=False, listener=here)
    admin.create_time_clock(uows, A, other, ["a"], assign_id=False, listener=there)
    draft = GeofenceDraft("Gate", "1 Road", *SITE, fence_size_m=200)
    geofences.create_geofences(uows, A, TC.id, [draft], listener=here)
    geofences.create_geofences(uows, A, other.id, [draft], listener=there)
    cursor = follow_index_changes(uows, here, 0)
    assert here.reread == [other.id]  # only the other process's clock
    assert _inside(here) and _inside(here, other.id)
    # A writer whose index update never happened (it raised, say) reported
    # nothing: the follower reads that change from the store.
    with uows() as uow:
        uow.index_changes.note(TC.id)
        uow.commit()
    here.reread.clear()
    follow_index_changes(uows, here, cursor)
    assert here.reread == [TC.id]
    assert not here._reported  # nothing left over once the follower passed


def test_a_group_commit_publishes_its_index_changes_together_and_before_answering(
    engine: Engine,
) -> None:
    """Through a group committer holding ``AccountFences.batched``: each
    caller's fences answer as soon as its call returns, a batch of changes is
    published as one snapshot, every change counts as reported (the follower
    reads none again), and a batch whose publishing fails is repaired from
    the store by the follower."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from geopunch.adapters.db.store import GroupCommitter
    from geopunch.geo import _index

    uows = AccountStore(engine)
    here = _CountingFences()
    batches: list[int] = []
    committer = GroupCommitter(
        uows, observe=lambda s, n: batches.append(n), commit_lock=here.batched
    )
    draft = GeofenceDraft("Gate", "1 Road", *SITE, fence_size_m=200)
    clocks = [replace(TC, id=900 + i) for i in range(24)]
    start = threading.Barrier(8)

    def load(tc: TimeClock) -> bool:
        if tc.id < 908:
            start.wait()  # the first eight together, so that batches form
        admin.create_time_clock(
            uows, A, tc, ["a"], assign_id=False, listener=here, commit=committer.run
        )
        geofences.create_geofences(uows, A, tc.id, [draft], listener=here, commit=committer.run)
        return _inside(here, tc.id)  # visible when the call returns

    try:
        before = here.view(A).snapshot.version
        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(load, clocks))
        published = here.view(A).snapshot.version - before
        changes = 2 * len(clocks)
        assert max(batches) > 1 and published == len(batches) < changes
        cursor = follow_index_changes(uows, here, 0)
        assert here.reread == [] and not here._reported

        # Publishing fails: the callers still get their answers (the change is
        # committed), the change is not counted as reported, and the follower
        # puts it into the index from the store.
        real = _index.build_table
        _index.build_table = lambda *a, **k: (_ for _ in ()).throw(MemoryError("no room"))
        try:
            made = geofences.create_geofences(
                uows, A, clocks[0].id, [draft], listener=here, commit=committer.run
            )
        finally:
            _index.build_table = real
        assert made
        snap = here.view(A).snapshot
        table = snap.tables[int(snap.owner[snap.clock_index(clocks[0].id)])]
        assert made[0].id.encode() not in set(table.ids.tolist())
        follow_index_changes(uows, here, cursor)
        assert here.reread == [clocks[0].id]
        snap = here.view(A).snapshot
        table = snap.tables[int(snap.owner[snap.clock_index(clocks[0].id)])]
        assert made[0].id.encode() in set(table.ids.tolist())
    finally:
        committer.close()
