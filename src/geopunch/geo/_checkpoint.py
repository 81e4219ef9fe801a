"""The fence index saved to a file and read back: a checkpoint.

A server with a million fences spends most of its start-up reading their rows
and building the table (bench/README.md); a checkpoint holds the built table
itself, so a restart reads a few hundred megabytes of arrays instead. The
file is a run of numpy ``.npy`` records (read with pickles off): first a JSON
header, which the caller fills (which store, up to which change) and checks
before trusting the rest, then per account the columns of
:class:`SavedIndex`, each with its CRC-32 in the header. One file of plain
records rather than an ``.npz``: numpy reads a record of a real file straight
into its array, where a zip member is copied through Python in pieces (four
times slower for a million fences).

It is written beside the final name, synced and renamed over it, so a reader
finds the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from geopunch.geo._index import TABLE_ARRAYS, FenceTable, SavedIndex

#: Moves when the layout of the file or of the table changes: older files are ignored.
FORMAT = 3

_PER_CLOCK = ("clock_ids", "extra_m", "job_digests")
#: The kernels are compiled for these types.
_DTYPES = {
    "clocks": "i4",
    "lats": "f8",
    "lons": "f8",
    "fx": "f8",
    "fy": "f8",
    "fz": "f8",
    "radius": "f8",
    "actions": "i1",
    "applies_all": "?",
    "job_start": "i8",
    "jobs": "i4",
    "clock_row_start": "i8",
    "slots": "i8",
    "entries": "f8",
    "entry_rows": "i4",
}


def _crc(a: npt.NDArray[Any]) -> int:
    return zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)


def write(path: Path, header: Mapping[str, Any], parts: Mapping[int, SavedIndex]) -> int:
    """Save ``parts`` (by account) with ``header``; the bytes written."""
    arrays: list[npt.NDArray[Any]] = []
    for part in parts.values():
        arrays += [getattr(part, name) for name in _PER_CLOCK]
        arrays += [getattr(part.table, name) for name in TABLE_ARRAYS]
    head = {
        **header,
        "format": FORMAT,
        "accounts": {str(a): p.table.handle_base for a, p in parts.items()},
        # Absent from checkpoints written before tables spanned only their own
        # clocks: those tables start at clock 0.
        "clock_bases": {str(a): p.table.clock_base for a, p in parts.items()},
        "crc": [_crc(a) for a in arrays],
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.frombuffer(json.dumps(head).encode(), dtype=np.uint8))
            for a in arrays:
                np.save(f, a, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
    return path.stat().st_size


def _header(f: IO[bytes]) -> dict[str, Any] | None:
    head: dict[str, Any] = json.loads(np.load(f, allow_pickle=False).tobytes())
    return head if head.get("format") == FORMAT else None


def read_header(path: Path) -> dict[str, Any] | None:
    """The header of the checkpoint at ``path``; None when there is none or
    it is of another format."""
    if not path.exists():
        return None
    with open(path, "rb") as f:
        return _header(f)


def read(path: Path, header: Mapping[str, Any]) -> dict[int, SavedIndex]:
    """Every account's saved index from the checkpoint whose header is
    ``header``. Raises ValueError when a column is damaged or the columns
    do not fit together."""
    parts: dict[int, SavedIndex] = {}
    crcs = iter(header["crc"])
    with open(path, "rb") as f:
        if _header(f) != header:
            raise ValueError("the file changed while it was read")

        def column() -> npt.NDArray[Any]:
            a: npt.NDArray[Any] = np.load(f, allow_pickle=False)
            if _crc(a) != next(crcs):
                raise ValueError("a column does not match its checksum")
            return a

        clock_bases = header.get("clock_bases", {})
        for key, base in header["accounts"].items():
            clock_ids, extra_m, digests = (column() for _ in _PER_CLOCK)
            table = FenceTable(
                int(base),
                *(column() for _ in TABLE_ARRAYS),
                clock_base=int(clock_bases.get(key, 0)),
            )
            _check(table, clock_ids.size)
            if extra_m.size != clock_ids.size or digests.size != clock_ids.size:
                raise ValueError("per-clock columns of different lengths")
            parts[int(key)] = SavedIndex(clock_ids, extra_m, digests, table)
    return parts


def _check(t: FenceTable, clocks: int) -> None:
    """The shapes and types the kernels rely on: a foreign table must not reach them."""
    n = t.size
    kinds = {name: getattr(t, name).dtype for name in TABLE_ARRAYS}
    if kinds["ids"].kind != "S" or any(
        kinds[name] != np.dtype(want) for name, want in _DTYPES.items()
    ):
        raise ValueError("a column of the wrong type")
    same = (t.lats, t.lons, t.fx, t.fy, t.fz, t.radius, t.actions, t.ids, t.applies_all)
    if any(a.shape != (n,) for a in same) or t.job_start.shape != (n + 1,):
        raise ValueError("fence columns of different lengths")
    # The clocks the table spans; clocks made after it was built are past its end.
    built_for = t.clock_base + t.clock_row_start.size - 1
    if not 0 <= t.clock_base <= built_for <= clocks or t.slots.ndim != 2 or t.entries.ndim != 2:
        raise ValueError("clock or cell arrays of the wrong shape")
    if t.entry_rows.shape != (t.entries.shape[0],) or t.jobs.shape != (int(t.job_start[-1]),):
        raise ValueError("cell entries or job lists of the wrong length")
    if n and (int(t.clocks.min()) < t.clock_base or int(t.clocks.max()) >= built_for):
        raise ValueError("a fence of a clock the checkpoint does not hold")
    if t.entry_rows.size and (int(t.entry_rows.min()) < 0 or int(t.entry_rows.max()) >= n):
        raise ValueError("a cell entry past the fences")
