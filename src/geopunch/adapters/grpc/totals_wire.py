"""A window's totals as the bytes of ``ListTimeActivitiesResponse.Data.totals``.

A month of 10,000 users is 300,000 ``DayTotals``. Setting them through the
protobuf API cost about 0.7 us a day (about 200 ms for that month, as long
as the totals' read); here the columns of :class:`WindowTotals` are encoded
with numpy instead, a few array operations for every day at once
(bench/README.md, totals).

The encoding is protobuf's own, field for field what ``SerializeToString``
writes for the same messages: fields in number order, a zero integer left
out as proto3 leaves it out, integers as varints (a negative one in ten
bytes), each message behind its tag and length
(tests/property/test_activity_rows.py holds the bytes equal).

Each record (one user's own fields, or one of its days) is laid out as a
row of a byte matrix, every part of it (a tag, a varint, the date) given
the width of its largest case, with a mask of the bytes it really has;
the rows in answer order, masked, are the answer.
"""

from __future__ import annotations

import numpy as np

from geopunch.domain.timesheets import WindowTotals

_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)  # a varint's ten 7-bit groups
#: The least value a varint of k + 2 bytes holds, for k = 0..8.
_LIMITS = np.left_shift(np.uint64(1), _SHIFTS[1:])


class _Row:
    """Parts of a record, side by side: bytes (n, width) and how many of
    each row's bytes count (n,)."""

    def __init__(self, n: int) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.n = n

    def const(self, data: bytes, present: np.ndarray | None = None) -> None:
        block = np.broadcast_to(np.frombuffer(data, np.uint8), (self.n, len(data)))
        count = np.full(self.n, len(data)) if present is None else present * len(data)
        self.parts.append((block, count))

    def raw(self, block: np.ndarray) -> None:
        self.parts.append((block, np.full(self.n, block.shape[1])))

    def varint(self, values: np.ndarray, present: np.ndarray | None = None) -> None:
        v = values.astype(np.int64).view(np.uint64)
        # Only as many groups as the largest value needs: seconds take three.
        widest = max(int(v.max(initial=0)).bit_length(), 1)
        shifts = _SHIFTS[: (widest + 6) // 7]
        groups = v[:, None] >> shifts
        size = np.searchsorted(_LIMITS, v, side="right") + 1
        more = np.arange(len(shifts)) < (size - 1)[:, None]
        block = (groups & 0x7F).astype(np.uint8) | (more * 0x80).astype(np.uint8)
        self.parts.append((block, size if present is None else size * present))

    def field(self, tag: int, values: np.ndarray) -> None:
        """An int64 field, left out where zero."""
        present = values != 0
        self.const(bytes([tag]), present)
        self.varint(values, present)

    def size(self) -> np.ndarray:
        """Each row's bytes."""
        total = np.zeros(self.n, np.int64)
        for _, count in self.parts:
            total += count
        return total

    def matrix(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows as (n, width) bytes and the mask of those that count."""
        out = np.zeros((self.n, width), np.uint8)
        mask = np.zeros((self.n, width), bool)
        at = 0
        for block, count in self.parts:
            w = block.shape[1]
            out[:, at : at + w] = block
            mask[:, at : at + w] = np.arange(w) < count[:, None]
            at += w
        return out, mask

    def width(self) -> int:
        return sum(block.shape[1] for block, _ in self.parts)


def encode_totals(t: WindowTotals, field: int = 3) -> bytes:
    """Every user's ``UserTotals`` as entries of the repeated field ``field``."""
    users, cells = len(t.user_ids), len(t.cells)
    if not users:
        return b""
    dates = np.frombuffer("".join(d.isoformat() for d in t.days).encode(), np.uint8)
    # A day: tag and length in its user (days = 5), then date = 1 and the seconds.
    day = _Row(cells)
    body = _Row(cells)
    body.const(b"\x0a\x0a")
    body.raw(dates.reshape(-1, 10)[t.cells[:, 0]])
    for tag, column in ((0x10, 1), (0x18, 2), (0x20, 3)):
        body.field(tag, t.cells[:, column])
    day_size = body.size()  # at most 45 bytes: its length is one byte
    day.const(b"\x2a")
    day.raw(day_size.astype(np.uint8)[:, None])
    day.parts += body.parts
    # A user: tag and length in the answer, then its id and sums; its days follow.
    fields = _Row(users)
    fields.field(0x08, t.user_ids)
    for tag, column in ((0x10, 0), (0x18, 1), (0x20, 2)):
        fields.field(tag, t.sums[:, column])
    begins = np.concatenate(([0], t.ends[:-1]))
    owner = np.repeat(np.arange(users), t.ends - begins)  # each day's user
    days_size = np.bincount(owner, day_size + 2, minlength=users).astype(np.int64)
    user = _Row(users)
    user.const(bytes([field << 3 | 2]))
    user.varint(fields.size() + days_size)
    user.parts += fields.parts

    width = max(user.width(), day.width())
    rows = np.zeros((users + cells, width), np.uint8)
    mask = np.zeros((users + cells, width), bool)
    # User u's row, then its days: the rows before it are u users and its first day's index.
    at_user = begins + np.arange(users)
    at_day = np.arange(cells) + owner + 1
    for row, at in ((user, at_user), (day, at_day)):
        data, counted = row.matrix(width)
        rows[at], mask[at] = data, counted
    return rows[mask].tobytes()
