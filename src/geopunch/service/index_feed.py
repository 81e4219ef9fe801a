"""The index-change feed: how every process's fence engine follows changes
that other processes (workers, replicas) commit to the store."""

from __future__ import annotations

from collections.abc import Sequence

from geopunch.domain.ports import FenceListener, UnitOfWork, UnitOfWorkFactory

#: Index changes read per page by a follower.
INDEX_CHANGE_PAGE = 1000
#: Time clocks read again per hold of the index's write lock: large enough
#: that a replica's bulk load is followed in few snapshots, small enough that
#: this process's writers never wait long for the lock.
REREAD_CHUNK = 64


def follow_index_changes(uows: UnitOfWorkFactory, index: FenceListener, cursor: int) -> int:
    """Bring ``index`` up to date with every time clock changed after ``cursor``
    (by any process on the store); return the new cursor.

    Each changed time clock is read again whole, with its enabled fences as
    columns, under the index's write lock: this process's own writers update
    the index under that lock right after their commit, so what is read here
    is never older than what the index holds. Changes this process's writers
    reported to the index themselves are skipped; asking under the lock
    means a writer that committed one of them has reported it by then.

    A page of the feed that changed at most ``REREAD_CHUNK`` clocks of one
    account (what another replica's call does) is read and applied in the
    transaction that read the page: one snapshot, a connection and three
    round trips fewer, which is most of how soon a replica sees another's
    change. Larger pages are read again ``REREAD_CHUNK`` clocks at a time,
    each chunk one query a table and one new snapshot.
    """
    while True:
        with index.write_lock(), uows(readonly=True) as uow:
            changes = uow.index_changes.after(cursor, INDEX_CHANGE_PAGE)
            by_account = _clocks_to_reread(index, changes)
            if len(by_account) == 1:
                ((account, ids),) = by_account.items()
                if len(ids) <= REREAD_CHUNK:
                    _reread(uow.for_account(account), index, account, ids)
                    by_account = {}
        for account, ids in by_account.items():
            for start in range(0, len(ids), REREAD_CHUNK):
                chunk = ids[start : start + REREAD_CHUNK]
                with index.write_lock(), uows(account=account, readonly=True) as mine:
                    _reread(mine, index, account, chunk)
        if changes:
            cursor = changes[-1][0]
        if len(changes) < INDEX_CHANGE_PAGE:
            return cursor


def _clocks_to_reread(
    index: FenceListener, changes: Sequence[tuple[int, int, int]]
) -> dict[int, list[int]]:
    """The clocks of ``changes`` that this process has not reported itself,
    by account (called under the index's write lock)."""
    others = [(a, tc) for seq, a, tc in changes if not index.reported(seq)]
    by_account: dict[int, list[int]] = {}
    for account, time_clock_id in dict.fromkeys(others):
        by_account.setdefault(account, []).append(time_clock_id)
    return by_account


def _reread(uow: UnitOfWork, index: FenceListener, account: int, ids: list[int]) -> None:
    """Read ``ids`` again in ``uow`` and give them to ``index`` as one change
    (under its write lock)."""
    found = uow.time_clocks.list_of(ids)  # a deleted one is gone
    if found:
        rows = uow.geofences.enabled_rows([tc.id for tc in found])
        index.time_clocks_read_again(account, found, rows)


def newest_event(uows: UnitOfWorkFactory) -> int:
    """The seq of the newest event of any account (0 for none): event streams
    are woken when it moves."""
    with uows(readonly=True) as uow:
        return uow.events.newest()


def prune_index_changes(uows: UnitOfWorkFactory, before: int) -> int:
    """Forget index changes older than ``before``: followers are far past them."""
    with uows() as uow:
        removed = uow.index_changes.prune(before)
        uow.commit()
    return removed
