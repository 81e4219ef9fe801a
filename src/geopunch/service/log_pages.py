"""Pages of the event log as webhook deliveries send them, read once for
every subscription a deliverer holds with the same account and filter."""

from __future__ import annotations

import asyncio
import functools
from typing import NamedTuple

from geopunch.domain.events import Event, event_json, json_bytes, kept_json_bytes
from geopunch.domain.ports import UnitOfWorkFactory
from geopunch.domain.webhooks import Subscription
from geopunch.service.events import EVENT_PAGE, events_after

#: Pages of the event log a deliverer keeps for its other subscriptions at
#: most (about 0.3 MB each).
MOST_SHARED_PAGES = 8


def event_body(e: Event) -> bytes:
    """One event's JSON body, compact UTF-8."""
    return json_bytes(event_json(e))


def _kept_body(e: Event) -> bytes:
    """``event_body`` for a page that may wait in memory."""
    return kept_json_bytes(event_json(e))


class Outgoing(NamedTuple):
    """An event as a delivery sends it: its body encoded once, its payload
    dropped (the payloads of a page of time-activity events took 0.6 MB)."""

    seq: int
    id: str
    type: str
    recorded_at: int
    body: bytes


#: A page of the event log as subscriptions deliver it.
Page = list[Outgoing]
#: What a page is read by: the account, the cursor, the event types, the time clocks.
_PageKey = tuple[int, int, tuple[str, ...], tuple[int, ...]]


def _key(sub: Subscription, cursor: int) -> _PageKey:
    return (sub.account_id, cursor, sub.event_types, sub.time_clock_ids)


class SharedPages:
    """Pages of the event log read once for every subscription held here
    that delivers the same account's events with the same filter.

    Ten subscriptions of one account's events read, decoded and encoded
    each page ten times: about a third of the server's work an event
    (bench/README.md). Shared, the ten cost little more a page than one.

    A page is kept for the number of other held subscriptions that had yet
    to reach its cursor when it was read (one held alone keeps nothing), and
    goes when the last of them has taken it; ``MOST_SHARED_PAGES`` bounds
    what a subscription that never reaches that cursor exactly leaves
    behind.
    A full page stays right: the log is append-only and seq order is commit
    order, so a later read at its cursor gives the same events. A short one
    (the end of the log) is shared only with readers that have seen no new
    events since it was read: a stale one would send them back to wait with
    those events unread. A read under way is shared too (its future is
    kept), so subscriptions woken together by new events read them once.
    Used on the deliverer's loop only.
    """

    def __init__(self, uows: UnitOfWorkFactory) -> None:
        self._uows = uows
        #: The page (read or being read), how many more readers are
        #: expected, and the event signal's version when its read began.
        self._kept: dict[_PageKey, tuple[asyncio.Future[Page], int, int]] = {}

    async def read(self, sub: Subscription, behind: int, seen: int) -> Page:
        """The page after ``sub``'s cursor. ``behind``: how many other
        subscriptions are expected to read it too; ``seen``: the event
        signal's version before this read."""
        key = _key(sub, sub.cursor)
        kept = self._kept.pop(key, None)
        if kept is not None and not self._fresh(kept[0], kept[2], seen):
            kept = None
        if kept is not None:
            page, left, at = kept
            if left > 1:
                self._kept[key] = (page, left - 1, at)
        else:
            page = self._start(key, behind, seen)
        # Shielded: one reader cancelled (its subscription changed) leaves
        # the read to the others.
        return await asyncio.shield(page)

    def read_ahead(self, sub: Subscription, after: int, readers: int, seen: int) -> None:
        """Start reading the page after seq ``after`` for ``readers``
        subscriptions with ``sub``'s filter (the one asking among them),
        unless it is kept or being read already.

        A deliverer asks while it sends a full page, so the next one is
        there when it is done: waiting for each read stalled every
        subscription reading the same pages at once, and at ten
        subscriptions the read took twice as long, its thread waiting for
        the interpreter behind the deliveries (bench/README.md)."""
        key = _key(sub, after)
        if key not in self._kept:
            self._start(key, readers, seen)

    def _start(self, key: _PageKey, readers: int, seen: int) -> asyncio.Future[Page]:
        """Read the page at ``key``, kept for ``readers`` more readers."""
        page = asyncio.ensure_future(asyncio.to_thread(self._read, key))
        if readers:
            self._kept[key] = (page, readers, seen)
            page.add_done_callback(functools.partial(self._forget_failed, key))
            while len(self._kept) > MOST_SHARED_PAGES:
                del self._kept[next(iter(self._kept))]
        return page

    @staticmethod
    def _fresh(page: asyncio.Future[Page], read_at: int, seen: int) -> bool:
        """Whether a kept page is what a read now would give."""
        if read_at == seen:
            return True
        return (
            page.done()
            and not page.cancelled()
            and page.exception() is None
            and (len(page.result()) >= EVENT_PAGE)
        )

    def _read(self, key: _PageKey) -> Page:
        account, cursor, types, clocks = key
        return [
            Outgoing(e.seq, e.id, e.type, e.recorded_at, _kept_body(e))
            for e in events_after(self._uows, account, cursor, types, clocks)
        ]

    def _forget_failed(self, key: _PageKey, page: asyncio.Future[Page]) -> None:
        """A read that failed is read again by the next reader, not kept."""
        kept = self._kept.get(key)
        if kept is not None and kept[0] is page and (page.cancelled() or page.exception()):
            del self._kept[key]
