"""The "who is on the clock" board's answer, from lines kept encoded.

A board answers one line per user, and between two looks few of them
change. Each protocol keeps its lines encoded (gRPC as protobuf bytes, HTTP
as JSON) and joins them: building and encoding every line was most of a
large board's call (bench/README.md, GetUserStatuses).

Idle lines are kept by user id, and for each recent list of users as one
list in order, into which a look sets its busy users' lines: a look's work
follows its busy users, not all of them. Busy lines are kept by the whole
status, its open activity's every field included, so a changed activity is
a new key and no line can be stale. The caches are bounded; the metrics count the
lines answered as kept or encoded anew, which shows a site with more users
on the clock than the caches hold.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from geopunch.domain.timesheets import Board, UserState, UserStatus
from geopunch.metrics import STATUS_LINES

#: Per protocol: an idle line costs about 130 B kept, a busy one about 300 B
#: (protobuf) or 600 B (JSON) beside the row it holds (the store's kept open
#: rows, repositories._OpenRows, are mostly the same rows).
IDLE_LINES_KEPT = 1 << 15
BUSY_LINES_KEPT = 1 << 14
#: Boards' lists of users whose idle lines are kept as a list, in order
#: (about 1 MB for 10,000 users): a time clock's everyone, and a few
#: kiosks' own lists.
USER_LISTS_KEPT = 16


class _Tally(threading.local):
    """What this thread's current board made anew: the caches call the
    encoder on a miss, in the thread that asked."""

    busy = 0  # busy lines encoded
    idle = False  # whether the list of idle lines was made


class BoardLines:
    """A board's lines as ``encode`` writes them, kept across looks."""

    def __init__(self, api: str, encode: Callable[[UserStatus], bytes]) -> None:
        tally = self._tally = _Tally()

        def counted(s: UserStatus) -> bytes:
            tally.busy += 1
            return encode(s)

        @functools.lru_cache(maxsize=IDLE_LINES_KEPT)
        def idle(user: int) -> bytes:
            return encode(UserStatus(user, UserState.IDLE))

        @functools.lru_cache(maxsize=USER_LISTS_KEPT)
        def everyone_idle(users: tuple[int, ...]) -> tuple[list[bytes], dict[int, int]]:
            """The idle lines of ``users`` in order, and each user's place."""
            tally.idle = True
            return list(map(idle, users)), {u: i for i, u in enumerate(users)}

        self._everyone_idle = everyone_idle
        self._busy = functools.lru_cache(maxsize=BUSY_LINES_KEPT)(counted)
        self._kept = STATUS_LINES.labels(api, "kept")
        self._encoded = STATUS_LINES.labels(api, "encoded")

    def lines(self, board: Board) -> list[bytes]:
        """Every user's line, in the board's order."""
        tally = self._tally
        tally.busy, tally.idle = 0, False
        # Every user's idle line, then the busy users' lines in their places:
        # most of a large board is idle, and its idle lines are the same
        # list from look to look.
        idle, at = self._everyone_idle(tuple(board.users))
        out = idle.copy()
        line = self._busy
        for user, status in board.busy.items():
            out[at[user]] = line(status)
        encoded = tally.busy + (len(out) - len(board.busy) if tally.idle else 0)
        self._encoded.inc(encoded)
        self._kept.inc(len(out) - encoded)
        return out
