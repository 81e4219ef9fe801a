"""The "who is on the clock" board's answer, from lines kept encoded.

A board answers one line per user, and between two looks few of them
change. Each protocol keeps its lines encoded (gRPC as protobuf bytes, HTTP
as JSON) and joins them: building and encoding every line was most of a
large board's call (bench/README.md, GetUserStatuses).

Idle lines are kept by user id. Busy lines are kept by the whole status,
its open activity's every field included, so a changed activity is a new
key and no line can be stale. The caches are bounded; the metrics count the
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


class _Tally(threading.local):
    """Lines encoded anew by this thread's current board: the caches call
    the encoder on a miss, in the thread that asked."""

    lines = 0


class BoardLines:
    """A board's lines as ``encode`` writes them, kept across looks."""

    def __init__(self, api: str, encode: Callable[[UserStatus], bytes]) -> None:
        tally = self._tally = _Tally()

        def counted(s: UserStatus) -> bytes:
            tally.lines += 1
            return encode(s)

        @functools.lru_cache(maxsize=IDLE_LINES_KEPT)
        def idle(user: int) -> bytes:
            return counted(UserStatus(user, UserState.IDLE))

        self._idle = idle
        self._busy = functools.lru_cache(maxsize=BUSY_LINES_KEPT)(counted)
        self._kept = STATUS_LINES.labels(api, "kept")
        self._encoded = STATUS_LINES.labels(api, "encoded")

    def lines(self, board: Board) -> list[bytes]:
        """Every user's line, in the board's order."""
        busy, idle, line, tally = board.busy, self._idle, self._busy, self._tally
        tally.lines = 0
        out = [idle(u) if (s := busy.get(u)) is None else line(s) for u in board.users]
        self._encoded.inc(tally.lines)
        self._kept.inc(len(out) - tally.lines)
        return out
