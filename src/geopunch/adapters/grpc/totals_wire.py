"""A window's totals as the bytes of ``ListTimeActivitiesResponse.Data.totals``.

Written from the columns of :class:`WindowTotals` with numpy rather than
set day by day through the protobuf API: about 0.7 us a day that way, 200 ms
for a month of 10,000 users (bench/README.md, totals). Every record of a
kind (a user's own fields, a day) is a row of a byte matrix, built a part
at a time (a constant, a varint, the date), each part as wide as its widest
case with a count of the bytes each row really has; the rows of both kinds
laid in answer order, their counted bytes are the answer.

The encoding is protobuf's own, field for field what ``SerializeToString``
writes for the same messages: fields in number order, a zero integer left
out as proto3 leaves it out, integers as varints, each message behind its
tag and length (tests/property/test_activity_rows.py holds the bytes equal).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geopunch.domain.timesheets import WindowTotals

_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)  # a varint's ten 7-bit groups
#: The least value a varint of k + 2 bytes holds, for k = 0..8.
_LIMITS = np.left_shift(np.uint64(1), _SHIFTS[1:])


class _ByteRows:
    """``n`` records, their parts side by side: each part bytes (n, width)
    and how many of each row's bytes count (n,)."""

    def __init__(self, n: int) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.n = n

    def const(self, data: bytes, present: np.ndarray | None = None) -> None:
        """The same bytes in every row (or in those ``present``)."""
        block = np.broadcast_to(np.frombuffer(data, np.uint8), (self.n, len(data)))
        count = np.full(self.n, len(data)) if present is None else present * len(data)
        self.parts.append((block, count))

    def raw(self, block: np.ndarray) -> None:
        """Bytes given per row, all counted: (n, width) uint8."""
        self.parts.append((block, np.full(self.n, block.shape[1])))

    def varint(self, values: np.ndarray, present: np.ndarray | None = None) -> None:
        """Protobuf's varint of each int64 (a negative one in ten bytes)."""
        v = values.astype(np.int64).view(np.uint64)
        # Only as many groups as the largest value needs: seconds take three.
        widest = max(int(v.max(initial=0)).bit_length(), 1)
        shifts = _SHIFTS[: (widest + 6) // 7]
        groups = v[:, None] >> shifts
        size = np.searchsorted(_LIMITS, v, side="right") + 1
        more = np.arange(len(shifts)) < (size - 1)[:, None]
        block = (groups & 0x7F).astype(np.uint8) | (more * 0x80).astype(np.uint8)
        self.parts.append((block, size if present is None else size * present))

    def size(self) -> np.ndarray:
        """Each row's bytes."""
        total = np.zeros(self.n, np.int64)
        for _, count in self.parts:
            total += count
        return total

    def width(self) -> int:
        return sum(block.shape[1] for block, _ in self.parts)


def _joined(kinds: Sequence[tuple[_ByteRows, np.ndarray]], total: int) -> bytes:
    """The counted bytes of every row, rows in answer order: each kind with
    the position of each of its rows among all ``total``."""
    width = max(rows.width() for rows, _ in kinds)
    out = np.zeros((total, width), np.uint8)
    mask = np.zeros((total, width), bool)
    for rows, at in kinds:
        col = 0
        for block, count in rows.parts:
            w = block.shape[1]
            out[at, col : col + w] = block
            mask[at, col : col + w] = np.arange(w) < count[:, None]
            col += w
    return out[mask].tobytes()


def _field(rows: _ByteRows, tag: int, values: np.ndarray) -> None:
    """An int64 field, left out where zero."""
    present = values != 0
    rows.const(bytes([tag]), present)
    rows.varint(values, present)


def encode_totals(t: WindowTotals, field: int = 3) -> bytes:
    """Every user's ``UserTotals`` as entries of the repeated field ``field``."""
    users, cells = len(t.user_ids), len(t.cells)
    if not users:
        return b""
    dates = np.frombuffer("".join(d.isoformat() for d in t.days).encode(), np.uint8)
    # A day: date = 1 and its seconds, behind its tag and length in its user (days = 5).
    body = _ByteRows(cells)
    body.const(b"\x0a\x0a")
    body.raw(dates.reshape(-1, 10)[t.cells[:, 0]])
    for tag, column in ((0x10, 1), (0x18, 2), (0x20, 3)):
        _field(body, tag, t.cells[:, column])
    day_size = body.size()  # at most 45 bytes: its length is one byte
    day = _ByteRows(cells)
    day.const(b"\x2a")
    day.raw(day_size.astype(np.uint8)[:, None])
    day.parts += body.parts
    # A user: its id and sums behind its tag and length in the answer; its days follow.
    fields = _ByteRows(users)
    _field(fields, 0x08, t.user_ids)
    for tag, column in ((0x10, 0), (0x18, 1), (0x20, 2)):
        _field(fields, tag, t.sums[:, column])
    begins = np.concatenate(([0], t.ends[:-1]))
    owner = np.repeat(np.arange(users), t.ends - begins)  # each day's user
    days_size = np.bincount(owner, day_size + 2, minlength=users).astype(np.int64)
    user = _ByteRows(users)
    user.const(bytes([field << 3 | 2]))
    user.varint(fields.size() + days_size)
    user.parts += fields.parts
    # User u's row, then its days: before it, u users and the days of those.
    at_user = begins + np.arange(users)
    at_day = np.arange(cells) + owner + 1
    return _joined([(user, at_user), (day, at_day)], users + cells)
