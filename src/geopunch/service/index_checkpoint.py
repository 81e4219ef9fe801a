"""Loading the fence index at start-up, from a checkpoint file when one can
be trusted, and writing that file.

A checkpoint is the index as it was when the change feed stood at some seq
(its cursor). It is used only when it belongs to this store's feed, the feed
still holds every change after its cursor (nothing past it was pruned), the
change at its cursor is the one it recorded (a store restored from an older
backup has another history), and replaying the changes since is cheaper than
reading every row. Replaying means what the index follower does all the
time: each time clock changed after the cursor is read again whole. Clocks
that differ from what the table was built with (settings or jobs edited,
new clocks) are read again too, so a checkpoint can be old but never wrong.
Anything else, or a file that cannot be read, and the index is built from
the rows as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from geopunch.domain.locations import FenceRows
from geopunch.domain.ports import FenceSnapshot, FenceSnapshotReader, UnitOfWork, UnitOfWorkFactory
from geopunch.geo.engine import AccountFences, SavedIndex, checkpoint
from geopunch.service.index_feed import follow_index_changes

log = logging.getLogger(__name__)

#: Past this many changes after a checkpoint, the rows are read instead.
#: Replaying costs about 0.6 ms a changed clock of 100 fences, so at this
#: limit a checkpoint of a million fences still starts several seconds
#: sooner (bench/README.md, start-up).
REPLAY_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class Loaded:
    """What ``load_index`` found: the index holds every change up to ``cursor``."""

    cursor: int
    newest_event: int
    accounts: int
    #: "checkpoint" or "rows".
    source: str
    #: Whether the index is what the checkpoint file holds (nothing replayed).
    as_saved: bool = False


def load_index(
    uows: UnitOfWorkFactory,
    index: AccountFences,
    path: Path | None,
    read_fences: FenceSnapshotReader | None = None,
    meanwhile: Callable[[], None] = lambda: None,
) -> Loaded:
    """Fill ``index`` with every account's time clocks and enabled fences.

    ``read_fences`` reads the fences of the accounts that are built from rows
    in a thread of its own, while this one reads their time clocks and runs
    ``meanwhile`` (start-up's warm-up of kernels and zone names; it runs once
    either way)."""
    # Loaded inside one batch (the write lock): no change can slip in between.
    with (
        uows(readonly=True) as uow,
        index.batched(),
        ThreadPoolExecutor(1, thread_name_prefix="fence-read") as pool,
    ):
        # The cursor first: a change committed while the rest is read comes
        # after it and is applied again by the follower, which is harmless.
        cursor = uow.index_changes.last()
        events = uow.events.newest()
        accounts = uow.accounts.ids()
        header, parts = _usable(uow, path, cursor)
        whole = [a for a in accounts if a not in parts]
        beside = _Beside(pool, read_fences, whole, cursor) if read_fences and whole else None
        meanwhile()
        restored = reread = 0
        for account in accounts:
            mine = uow.for_account(account)
            clocks = mine.time_clocks.list_all()
            part = parts.get(account)
            stale = index.restore(account, clocks, part) if part is not None else None
            if stale is None:
                rows = beside.rows(account) if beside is not None else None
                index.load(
                    account, clocks, rows if rows is not None else mine.geofences.enabled_rows()
                )
                continue
            restored += 1
            reread += len(stale)
            if stale:
                rows = mine.geofences.enabled_rows([tc.id for tc in stale])
                index.time_clocks_read_again(account, stale, rows)
    if header is None or not restored:
        return Loaded(cursor, events, len(accounts), "rows")
    saved_at = int(header["cursor"])
    # One batch: nothing is served yet, and the index publishes once for all
    # the clocks read again instead of once per clock.
    with index.batched():
        cursor = follow_index_changes(uows, index, saved_at)
    as_saved = cursor == saved_at and not reread and restored == len(parts) == len(accounts)
    return Loaded(cursor, events, len(accounts), "checkpoint", as_saved)


class _Beside:
    """Accounts' fences read by a ``FenceSnapshotReader`` on ``pool``'s thread.

    Its rows are used only when its snapshot saw the same newest change as the
    loading unit of work: both then hold the same clocks and fences. Otherwise
    (a change committed in between), when it failed, or when it found the
    store too small to pay, the unit of work reads each account's rows."""

    def __init__(
        self, pool: Executor, read: FenceSnapshotReader, accounts: list[int], cursor: int
    ) -> None:
        self._future = pool.submit(read, accounts)
        self._cursor = cursor

    def rows(self, account: int) -> FenceRows | None:
        return self._snapshot.rows.get(account) if self._snapshot is not None else None

    @cached_property
    def _snapshot(self) -> FenceSnapshot | None:
        """The reader's snapshot when it may be used (waited for once)."""
        try:
            snapshot = self._future.result()
        except Exception as exc:  # the unit of work can still read them
            log.warning(
                "fence rows not read beside start-up", extra={"fields": {"error": repr(exc)}}
            )
            return None
        if snapshot is not None and snapshot.cursor != self._cursor:
            log.info(
                "fence rows read again: the store changed while they were read",
                extra={"fields": {"cursor": self._cursor, "read_at": snapshot.cursor}},
            )
            return None
        return snapshot


def _usable(
    uow: UnitOfWork, path: Path | None, cursor: int
) -> tuple[dict[str, Any] | None, dict[int, SavedIndex]]:
    """The checkpoint's header and parts when it can be trusted (see the module's docstring)."""
    if path is None:
        return None, {}
    try:
        header = checkpoint.read_header(path)
    except Exception as exc:  # only a cache: whatever is wrong with it, read the rows
        log.warning("fence index checkpoint unreadable", extra={"fields": {"error": repr(exc)}})
        return None, {}
    if header is None:
        return None, {}
    feed, pruned = uow.index_changes.identity()
    saved_at = int(header["cursor"])
    recorded = header.get("last_change")
    found = uow.index_changes.at(saved_at) if saved_at else None
    if header.get("feed") != feed:
        why = "made from another store"
    elif saved_at > max(cursor, pruned):  # a pruned feed may be empty
        why = "newer than the store"
    elif saved_at < pruned:
        why = "changes after it were pruned from the feed"
    elif (found is not None and list(found) != recorded) or (found is None and saved_at > pruned):
        why = "the store's history differs from the one it was made from"
    elif uow.index_changes.count_after(saved_at) > REPLAY_LIMIT:
        why = "too many changes since"
    else:
        try:
            return header, checkpoint.read(path, header)
        except Exception as exc:  # as above
            why = f"unreadable: {exc!r}"
    log.info("fence index checkpoint not used", extra={"fields": {"reason": why}})
    return None, {}


def save_checkpoint(
    uows: UnitOfWorkFactory, index: AccountFences, path: Path, cursor: int
) -> dict[int, int] | None:
    """Write the index to ``path``; the index must hold every change up to
    ``cursor`` (it may hold later ones: replaying them is harmless). The
    versions of the accounts' snapshots written (see ``AccountFences.versions``),
    or None when the index kept changing too fast to compact."""
    started = time.perf_counter()
    with uows(readonly=True) as uow:
        feed, _ = uow.index_changes.identity()
        last = uow.index_changes.at(cursor) if cursor else None
    parts = index.saved()
    if parts is None:
        return None
    header = {
        "feed": feed,
        "cursor": cursor,
        "last_change": None if last is None else list(last),
        "saved_at": time.time(),
    }
    size = checkpoint.write(path, header, parts)
    log.info(
        "fence index checkpoint written",
        extra={
            "fields": {
                "path": str(path),
                "cursor": cursor,
                "bytes": size,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            }
        },
    )
    return {account: part.version for account, part in parts.items()}
