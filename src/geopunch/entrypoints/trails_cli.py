"""``geopunch trails``: validate historical GPS trail files against geofences.

Input: CSV or Parquet files with the columns ``user_id``, ``time_clock_id``,
``timestamp`` (Unix seconds), ``latitude``, ``longitude`` and, optionally,
``accuracy`` (metres; empty or NaN for unknown). Fences come from a GeoJSON
file or from a running server. Output: a directory with ``samples/`` (one
verdict per input row) and ``exits/`` (one row per exit event), as Parquet or
CSV part files, plus a summary on the terminal.

The local engine streams the files in chunks with the trail state carried
from chunk to chunk; the Dask engine shuffles rows so that each partition
holds whole trails and evaluates partitions in parallel, on local threads or
on a cluster (``--scheduler``; then the output directory must be on storage
every worker can write to).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from geopunch.domain.errors import DomainError
from geopunch.domain.models import (
    ExitAction,
    ExitDetectionSettings,
    Geofence,
    GeofenceDraft,
    Job,
    TimeClock,
)
from geopunch.domain.rules import validate_geofences
from geopunch.geo.engine import FenceIndex, SnapshotView
from geopunch.service.trail_files import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    STATUS_NAMES,
    Chunk,
    Exits,
    Summary,
    TrailStream,
    Verdicts,
)


class UsageError(Exception):
    """A problem with the command's input that the user must fix (exit code 2)."""


# --- fences ---------------------------------------------------------------------------


FenceSet = tuple[list[TimeClock], list[Geofence]]


def load_geojson(path: Path) -> FenceSet:
    """Fences from a GeoJSON FeatureCollection of Points.

    Feature properties: ``fenceId``, ``timeClockId``, ``fenceSize`` (metres,
    default 150), ``onGeofenceExitAction``, ``isEnabled``, ``jobIds``,
    ``name``. An optional top-level ``timeClocks`` list gives clocks' ``id``,
    ``userIds``, ``jobs`` (ids) and ``exitDetection`` thresholds; clocks only
    named by fences get the defaults and accept every user.
    """
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read fences from {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise UsageError(f"{path} is not a GeoJSON FeatureCollection")
    clocks: dict[int, TimeClock] = {}
    for i, raw in enumerate(_list(doc, "timeClocks", path)):
        try:
            ed = raw.get("exitDetection", {})
            clocks[int(raw["id"])] = TimeClock(
                id=int(raw["id"]),
                name=str(raw.get("name", raw["id"])),
                timezone=str(raw.get("timezone", "UTC")),
                jobs=tuple(Job(str(j)) for j in raw.get("jobs", [])),
                user_ids=frozenset(int(u) for u in raw.get("userIds", [])),
                exit_detection=ExitDetectionSettings(
                    **{k: float(v) for k, v in _snake(ed).items()}
                ),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{path}: timeClocks[{i}]: {_problem(exc)}") from exc
    by_clock: dict[int, list[tuple[int, str, GeofenceDraft]]] = {}
    for i, feature in enumerate(_list(doc, "features", path)):
        try:
            props = feature.get("properties") or {}
            geometry = feature.get("geometry") or {}
            if geometry.get("type") != "Point":
                raise UsageError(f"{path}: features[{i}] is not a Point")
            lon, lat = geometry["coordinates"][:2]
            clock = int(props["timeClockId"])
            draft = GeofenceDraft(
                name=str(props.get("name", "fence")),
                address=str(props.get("address", "-")),
                latitude=float(lat),
                longitude=float(lon),
                is_enabled=props.get("isEnabled"),
                fence_size_m=props.get("fenceSize"),
                job_ids=tuple(str(j) for j in props.get("jobIds", ())),
                exit_action=str(props.get("onGeofenceExitAction", "")),
            )
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise UsageError(f"{path}: features[{i}]: {_problem(exc)}") from exc
        fence_id = str(props.get("fenceId", feature.get("id", f"fence-{i}")))
        by_clock.setdefault(clock, []).append((i, fence_id, draft))
    fences: list[Geofence] = []
    for clock_id, items in by_clock.items():
        tc = clocks.setdefault(clock_id, TimeClock(id=clock_id, name=str(clock_id), timezone="UTC"))
        ids = iter([fid for _, fid, _ in items])
        try:
            fences.extend(validate_geofences([d for _, _, d in items], tc, ids.__next__))
        except DomainError as exc:
            first = exc.violations[0] if exc.violations else None
            where = f"time clock {clock_id}"
            if first is not None and first.field.startswith("geofences["):
                n = int(first.field[len("geofences[") :].partition("]")[0])
                where = f"features[{items[n][0]}]"
            raise UsageError(f"{path}: {where}: {exc.message}") from exc
    return list(clocks.values()), fences


def _list(doc: dict[str, Any], key: str, path: Path) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise UsageError(f"{path}: {key} is not a list")
    return value


def _problem(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing {exc.args[0]!r}"
    return str(exc)[:200] or type(exc).__name__


def _snake(d: dict[str, Any]) -> dict[str, Any]:
    return {"".join("_" + ch.lower() if ch.isupper() else ch for ch in k): v for k, v in d.items()}


def load_from_server(address: str, api_key: str, clock_ids: Sequence[int]) -> FenceSet:
    """Time clocks and their fences from a running server (unknown ids are skipped)."""
    import grpc

    from geopunch.adapters.grpc.convert import time_clock_from_proto
    from geopunch.v1 import admin_pb2, admin_pb2_grpc, geofences_pb2, geofences_pb2_grpc

    auth = (("x-api-key", api_key),)
    clocks: list[TimeClock] = []
    fences: list[Geofence] = []
    with grpc.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        geo = geofences_pb2_grpc.GeofenceServiceStub(channel)
        for clock_id in clock_ids:
            try:
                reply = admin.GetTimeClock(
                    admin_pb2.GetTimeClockRequest(time_clock_id=clock_id), metadata=auth
                )
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    continue
                raise UsageError(f"server {address}: {exc.code().name}: {exc.details()}") from exc
            clocks.append(time_clock_from_proto(reply.data)[0])
            listed = geo.ListGeofences(
                geofences_pb2.ListGeofencesRequest(time_clock_id=clock_id), metadata=auth
            )
            for g in listed.data.geofences:
                fences.append(
                    Geofence(
                        id=g.id,
                        time_clock_id=clock_id,
                        name=g.name,
                        is_enabled=g.is_enabled,
                        fence_size_m=g.fence_size,
                        job_ids=tuple(g.job_ids),
                        exit_action=ExitAction(g.on_geofence_exit_action or "noAction"),
                        address=g.location.address,
                        latitude=g.location.latitude,
                        longitude=g.location.longitude,
                    )
                )
    return clocks, fences


# --- input ---------------------------------------------------------------------------


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".txt") or path.name.lower().endswith(".csv.gz"):
        return "csv"
    raise UsageError(f"{path}: unknown file type (use .csv or .parquet)")


def _check_columns(path: Path, names: Sequence[str]) -> list[str]:
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise UsageError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(names) or 'none'}; "
            f"required: {', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})"
        )
    return [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in names]


def record_batches(path: Path, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    """The file's rows in batches of about ``chunk_rows``, only the known columns."""
    if _kind(path) == "parquet":
        try:
            pf = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from exc
        columns = _check_columns(path, pf.schema_arrow.names)
        yield from pf.iter_batches(batch_size=chunk_rows, columns=columns)
        return
    # Read as text: the values are converted by to_chunk, for both engines.
    types = {c: pa.string() for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)}
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=max(1 << 20, chunk_rows * 64)),
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True),
        )
    except (OSError, pa.ArrowInvalid) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    _check_columns(path, reader.schema.names)
    try:
        yield from reader
    except pa.ArrowInvalid as exc:
        raise UsageError(f"{path}: {exc}") from exc


def count_rows(path: Path) -> int:
    """Rows of a file, for the progress display: Parquet keeps the count in
    its metadata; a CSV file's lines are counted (a read of the file at
    disk speed: 0.09 s for a 142 MiB file here; a quoted value with a line break in
    it would count twice, which only makes the estimate high)."""
    if _kind(path) == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    lines, last = 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"  # a last line without its newline
    return max(lines - 1, 0)  # less the header


class Origins:
    """Where a row of the input came from: its file and its place there, so
    that a bad value is reported as ``trips.csv, line 7``."""

    def __init__(self, paths: Sequence[Path], rows: Sequence[int]) -> None:
        self._starts = list(itertools.accumulate([0, *rows[:-1]]))
        self._paths = list(paths)

    def where(self, row: int) -> str:
        i = max(j for j, start in enumerate(self._starts) if start <= row)
        path, in_file = self._paths[i], row - self._starts[i]
        if _kind(path) == "csv":
            return f"{path}, line {in_file + 2}"  # after the header line
        return f"{path}, row {in_file}"


def _numbers(
    arr: pa.Array | pa.ChunkedArray, name: str, target: pa.DataType, rows: Any, origins: Origins
) -> pa.Array:
    """``arr`` as ``target``; a value that is not a number is a UsageError
    naming the file, the line or row, the column and the value."""
    try:
        return pc.cast(arr, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    lo, hi = 0, len(arr)
    while hi - lo > 1:  # bisect to the first value that does not convert
        mid = (lo + hi) // 2
        try:
            pc.cast(arr.slice(lo, mid - lo), target)
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    value = str(arr[lo].as_py())[:40]
    kind = "an integer" if pa.types.is_integer(target) else "a number"
    raise UsageError(f"{origins.where(int(rows[lo]))}: column {name}: {value!r} is not {kind}")


def to_chunk(
    batch: pa.RecordBatch | pa.Table, rows: np.ndarray[Any, Any], origins: Origins
) -> Chunk:
    """The rows ``rows`` (numbers in the whole input) of ``batch``, converted.
    Both engines convert here, so they accept and refuse the same values."""
    n = batch.num_rows

    def col(name: str, dtype: Any, fill: Any) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        if name not in batch.schema.names:
            return np.full(n, fill, dtype), np.zeros(n, np.bool_)
        target = pa.float64() if dtype is np.float64 else pa.int64()
        arr = _numbers(batch.column(name), name, target, rows, origins)
        nulls = np.asarray(arr.is_null(), dtype=np.bool_)
        return np.asarray(arr.fill_null(fill), dtype=dtype), nulls

    user, m1 = col("user_id", np.int64, 0)
    clock, m2 = col("time_clock_id", np.int64, 0)
    ts, m3 = col("timestamp", np.int64, 0)
    lat, _ = col("latitude", np.float64, np.nan)
    lon, _ = col("longitude", np.float64, np.nan)
    acc, _ = col("accuracy", np.float64, np.nan)
    return Chunk(
        row=np.asarray(rows, np.int64),
        user_id=user,
        time_clock_id=clock,
        timestamp=ts,
        latitude=lat,
        longitude=lon,
        accuracy=acc,
        missing=m1 | m2 | m3,
    )


def clock_ids_in(paths: Sequence[Path], chunk_rows: int) -> list[int]:
    """Distinct time clock ids of the input (a pass over that column only)."""
    seen: set[int] = set()
    for path in paths:
        first = 0
        for batch in record_batches(path, chunk_rows):
            rows = np.arange(first, first + batch.num_rows)
            col = _numbers(
                batch.column("time_clock_id"),
                "time_clock_id",
                pa.int64(),
                rows,
                Origins([path], [batch.num_rows]),
            )
            seen.update(pc.unique(col.drop_null()).to_pylist())
            first += batch.num_rows
    return sorted(seen)


# --- output --------------------------------------------------------------------------


_STATUS_CODES = sorted(STATUS_NAMES)
_STATUS_DICT = pa.array([STATUS_NAMES[c] for c in _STATUS_CODES], pa.string())
_STATUS_INDEX = np.zeros(max(_STATUS_CODES) + 1, np.int8)
_STATUS_INDEX[_STATUS_CODES] = np.arange(len(_STATUS_CODES))


def verdict_table(v: Verdicts, fmt: str) -> pa.Table:
    """Columns without a Python object per row: status names by dictionary,
    fence ids from the CSR lists (a list column in Parquet, joined with ``;``
    in CSV, which has no lists). The row's position and accuracy come along,
    so an analyst needs no join with the input."""
    lists = pa.LargeListArray.from_arrays(
        pa.array(v.fence_offsets), pa.array(v.fence_ids, pa.string())
    )
    fence_ids = (
        lists.cast(pa.list_(pa.string())) if fmt == "parquet" else pc.binary_join(lists, ";")
    )
    return pa.table(
        {
            "row": v.row,
            "user_id": v.user_id,
            "time_clock_id": v.time_clock_id,
            "timestamp": v.timestamp,
            "latitude": v.latitude,
            "longitude": v.longitude,
            "accuracy": pa.array(v.accuracy, pa.float64(), mask=np.isnan(v.accuracy)),
            "status": pa.DictionaryArray.from_arrays(
                pa.array(_STATUS_INDEX[v.status]), _STATUS_DICT
            ).cast(pa.string()),
            "inside": v.inside,
            "fence_ids": fence_ids,
        }
    )


def exit_table(e: Exits) -> pa.Table:
    return pa.table(
        {
            "row": e.row,
            "user_id": e.user_id,
            "time_clock_id": e.time_clock_id,
            "timestamp": e.timestamp,
            "fence_id": pa.array(e.fence_id, pa.string()),
            "action": pa.array(e.action, pa.string()),
            "other_fence_inside": e.other_fence_inside,
            "outcome": pa.array(e.outcome, pa.string()),
            "entered_at": pa.array(e.entered_at, pa.int64(), mask=e.entered_at < 0),
            "seconds_inside": pa.array(e.seconds_inside, pa.int64(), mask=e.seconds_inside < 0),
        }
    )


class PartWriter:
    """Appends tables to ``out/<name>/part-<id>.<fmt>``, one file per writer."""

    def __init__(self, out: Path, name: str, part: str, fmt: str) -> None:
        folder = out / name
        # Not parents: a task still running after its run failed must not
        # bring back the staging folder that was removed.
        folder.mkdir(exist_ok=True)
        self.path = folder / f"part-{part}.{fmt}"
        self._fmt = fmt
        self._writer: Any = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            if self._fmt == "parquet":
                self._writer = pq.ParquetWriter(self.path, table.schema)
            else:
                self._writer = pacsv.CSVWriter(self.path, table.schema)
        self._writer.write_table(table)

    def close(self, empty_schema: pa.Schema) -> None:
        if self._writer is None:  # always leave a file, so readers see the columns
            self.write(empty_schema.empty_table())
        self._writer.close()


# --- engines -------------------------------------------------------------------------


def _view(fences: FenceSet) -> SnapshotView:
    clocks, fence_list = fences
    index = FenceIndex()
    index.load(clocks, fence_list)
    return index.view()


def evaluate_stream(
    view: SnapshotView,
    chunks: Iterator[Chunk],
    out: Path,
    fmt: str,
    part: str,
    progress: Any = None,
) -> Summary:
    """Evaluate chunks in order, carrying trail state, writing verdicts and exits."""
    stream = TrailStream(view)
    samples = PartWriter(out, "samples", part, fmt)
    exits = PartWriter(out, "exits", part, fmt)
    empty_v = verdict_table(_empty_verdicts(), fmt)
    empty_e = exit_table(_empty_exits())
    try:
        for chunk in chunks:
            # Judged a piece at a time so that the progress display moves
            # smoothly; written once per chunk, so that Parquet row groups
            # keep the chunk's size.
            verdicts, leaving = [], []
            for piece in _pieces(chunk, PROGRESS_ROWS):
                v, e = stream.process(piece)
                verdicts.append(verdict_table(v, fmt))
                if e.row.size:
                    leaving.append(exit_table(e))
                if progress is not None:
                    progress(piece.size)
            samples.write(pa.concat_tables(verdicts))
            if leaving:
                exits.write(pa.concat_tables(leaving))
    finally:
        samples.close(empty_v.schema)
        exits.close(empty_e.schema)
    return stream.summary


#: Rows judged between two moves of the progress display.
PROGRESS_ROWS = 65_536


def _pieces(chunk: Chunk, rows: int) -> Iterator[Chunk]:
    if chunk.size <= rows:
        yield chunk
        return
    for start in range(0, chunk.size, rows):
        yield chunk.take(slice(start, start + rows))


def _empty_verdicts() -> Verdicts:
    z, f = np.zeros(0, np.int64), np.zeros(0, np.float64)
    return Verdicts(
        z, z, z, z, f, f, f, np.zeros(0, np.uint8), np.zeros(0, np.bool_), np.zeros(1, np.int64), []
    )


def _empty_exits() -> Exits:
    z = np.zeros(0, np.int64)
    return Exits(z, z, z, z, [], [], np.zeros(0, np.bool_), [], z, z)


def run_local(
    paths: Sequence[Path],
    fences: FenceSet,
    out: Path,
    fmt: str,
    chunk_rows: int,
    progress: Any,
    sort_within_trail: bool = False,
) -> Summary:
    """Evaluate the inputs in one stream of chunks. With ``sort_within_trail``
    the whole input is read first and each trail's rows put in time order:
    memory for every row (about 60 bytes each) instead of one chunk."""
    view = _view(fences)
    seen: list[int] = []  # rows of each file read so far (for error locations)

    def chunks() -> Iterator[Chunk]:
        first = 0
        for path in paths:
            seen.append(0)
            for batch in record_batches(path, chunk_rows):
                rows = np.arange(first, first + batch.num_rows, dtype=np.int64)
                seen[-1] += batch.num_rows
                yield to_chunk(batch, rows, Origins(paths[: len(seen)], seen))
                first += batch.num_rows

    if not sort_within_trail:
        return evaluate_stream(view, chunks(), out, fmt, "00000", progress)
    parts = list(chunks())
    ordered = Chunk.concat(parts).sorted_within_trails() if parts else None
    del parts
    pieces: Iterator[Chunk] = iter(())
    if ordered is not None:
        pieces = (
            ordered.take(slice(i, i + chunk_rows)) for i in range(0, ordered.size, chunk_rows)
        )
    return evaluate_stream(view, pieces, out, fmt, "00000", progress)


_WORKER_VIEWS: dict[str, SnapshotView] = {}


def _partition(
    frame: Any,
    fences: FenceSet,
    token: str,
    out: str,
    fmt: str,
    origins: Origins,
    sort_within_trail: bool = False,
    partition_info: Any = None,
) -> Any:
    """Dask task: one partition of whole trails, in file order within each
    trail, or in time order with ``sort_within_trail``."""
    import pandas as pd

    view = _WORKER_VIEWS.get(token)
    if view is None:
        view = _WORKER_VIEWS[token] = _view(fences)
    number = partition_info["number"] if partition_info else 0
    order = ["user_id", "time_clock_id", "row"]
    if sort_within_trail:  # the values are still text from CSV: order by their numbers
        frame = frame.assign(_when=pd.to_numeric(frame["timestamp"], errors="coerce"))
        order.insert(2, "_when")
    frame = frame.sort_values(order, kind="stable").drop(columns=["_when"], errors="ignore")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    chunk = to_chunk(table.drop_columns(["row"]), np.asarray(frame["row"], np.int64), origins)
    summary = evaluate_stream(view, iter([chunk]), Path(out), fmt, f"{number:05d}")
    return pd.DataFrame(
        {
            "rows": [summary.rows],
            "status": [json.dumps(dict(summary.status))],
            "exits": [json.dumps(dict(summary.exits))],
        }
    )


def run_dask(
    paths: Sequence[Path],
    fences: FenceSet,
    out: Path,
    fmt: str,
    chunk_rows: int,
    scheduler: str | None,
    partitions: int | None,
    progress: Callable[[int], Any] | None = None,
    sort_within_trail: bool = False,
) -> Summary:
    """Evaluate with Dask: rows numbered in input order, shuffled by trail, one
    task per partition (each writes its own part files). ``progress`` is told
    the rows of each partition as it finishes, on either scheduler."""
    import dask
    import dask.dataframe as dd
    import pandas as pd

    numbered = []
    offset = 0
    counts = []
    for path in paths:
        columns = _check_columns(path, _columns_of(path))
        if _kind(path) == "parquet":
            frame = dd.read_parquet(str(path), columns=columns)
        else:
            # As text, like the local engine: to_chunk converts for both.
            frame = dd.read_csv(
                str(path),
                usecols=columns,
                dtype={c: "string" for c in columns},
                keep_default_na=False,
                na_values=[""],
                blocksize=max(chunk_rows * 64, 1 << 20),
            )
        frame, rows = _number_rows(frame, offset)
        numbered.append(frame)
        counts.append(rows)
        offset += rows
    origins = Origins(paths, counts)
    data = dd.concat(numbered) if len(numbered) > 1 else numbered[0]  # type: ignore[no-untyped-call]
    parts = partitions or max(1, min(256, offset // max(chunk_rows, 1) + 1))
    # Rows go to partitions by their trail (the values are converted, and bad
    # ones reported, inside the partitions).
    data = data.assign(
        trail=dd.to_numeric(data["user_id"], errors="coerce").fillna(-1).astype("float64")
        * 1_000_003
        + dd.to_numeric(data["time_clock_id"], errors="coerce").fillna(-1).astype("float64")
    )
    data = data.shuffle("trail", npartitions=parts).drop(columns=["trail"])
    token = hashlib.sha256(repr(fences).encode()).hexdigest()[:16]
    meta = pd.DataFrame({"rows": pd.Series(dtype="int64"), "status": "", "exits": ""}).iloc[:0]
    results = data.map_partitions(
        _partition,
        fences,
        token,
        str(out),
        fmt,
        origins,
        sort_within_trail,
        meta=meta,
        align_dataframes=False,
    )
    told = progress or (lambda rows: None)
    try:
        if scheduler:
            from distributed import Client, as_completed

            with Client(scheduler) as client:  # type: ignore[no-untyped-call]
                futures = client.compute(results.to_delayed())
                finished = []
                for future in as_completed(futures):  # type: ignore[no-untyped-call]
                    part = future.result()
                    told(int(part["rows"].sum()))
                    finished.append(part)
                frame = pd.concat(finished) if finished else meta
        else:
            # A pool of our own, so that after a failed task the run waits
            # for the tasks still running before its output is removed.
            pool = ThreadPoolExecutor(os.cpu_count() or 1)
            try:
                with (
                    dask.config.set(scheduler="threads", pool=pool),
                    _PartitionsDone(told),
                ):
                    frame = results.compute()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    except (ValueError, TypeError) as exc:  # unparsable values in the input
        raise UsageError(f"cannot evaluate the input: {exc}") from exc
    summary = Summary()
    for rows, status, exits in frame.itertuples(index=False):
        part = Summary(int(rows))
        part.status.update(json.loads(status))
        part.exits.update(json.loads(exits))
        summary.add(part)
    return summary


class _PartitionsDone:
    """Tells ``told`` the rows of each trail partition that the local
    scheduler finishes (a Dask callback), so that both engines feed
    one progress display."""

    def __init__(self, told: Callable[[int], Any]) -> None:
        from dask.callbacks import Callback

        # Dask names a partition's task after the function it runs (the
        # optimized graph's names differ from ``results``' own).
        prefix, done = f"{_partition.__name__}-", told

        class _Done(Callback):
            def _posttask(self, key: Any, result: Any, *args: Any) -> None:
                if isinstance(key, tuple) and str(key[0]).startswith(prefix):
                    done(int(result["rows"].sum()))

        self._callback = _Done()  # type: ignore[no-untyped-call]

    def __enter__(self) -> None:
        self._callback.__enter__()  # type: ignore[no-untyped-call]

    def __exit__(self, *exc: object) -> None:
        self._callback.__exit__(*exc)  # type: ignore[no-untyped-call]


def _columns_of(path: Path) -> list[str]:
    if _kind(path) == "parquet":
        return list(pq.ParquetFile(path).schema_arrow.names)
    with path.open(newline="") as f:
        return [c.strip() for c in next(csv.reader(f), [])]


def _number_rows(frame: Any, start: int) -> tuple[Any, int]:
    """``frame`` with ``row``, each row's number in the whole input (counting
    from ``start``), and its number of rows (one pass to count partitions)."""
    lengths = frame.map_partitions(len).compute().tolist()
    offsets = list(itertools.accumulate([start, *lengths[:-1]]))

    def add(part: Any, partition_info: Any = None) -> Any:
        base = offsets[partition_info["number"]] if partition_info else start
        return part.assign(row=np.arange(base, base + len(part), dtype="int64"))

    meta = frame._meta.assign(row=np.zeros(0, dtype="int64"))
    return frame.map_partitions(add, meta=meta), int(sum(lengths))


# --- command -------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    started = time.perf_counter()
    try:
        for path in args.inputs:
            if not path.exists():
                raise UsageError(f"{path}: no such file")
            _kind(path)
        if args.chunk_rows < 1:
            raise UsageError("--chunk-rows must be at least 1")
        if args.fences is not None:
            fences = load_geojson(args.fences)
        else:
            key = args.api_key or os.environ.get("GEOPUNCH_API_KEY")
            if not key:
                raise UsageError("--server needs --api-key (or GEOPUNCH_API_KEY)")
            fences = load_from_server(args.server, key, clock_ids_in(args.inputs, args.chunk_rows))
        staging = _staging(args.out, args.overwrite)
    except UsageError as exc:
        print(f"geopunch trails: {exc}", file=sys.stderr)  # unwrapped: scripts grep it
        return 2
    try:
        summary = _evaluate(args, fences, staging, console)
        (staging / SUCCESS_MARKER).write_text(
            json.dumps({"rows": summary.rows, "status": summary.status, "exits": summary.exits})
        )
        _publish(staging, args.out)
    except UsageError as exc:
        print(f"geopunch trails: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a success
    elapsed = time.perf_counter() - started
    # A line of its own, not the table's title: a title longer than the two
    # narrow columns wraps.
    console.print(f"geopunch trails: {summary.rows:,} rows in {elapsed:.1f} s")
    table = Table()
    table.add_column("rows / exits")
    table.add_column("count", justify="right")
    for name in STATUS_NAMES.values():
        if summary.status.get(name):
            table.add_row(name, f"{summary.status[name]:,}")
    for action, count in sorted(summary.exits.items()):
        table.add_row(f"exits: {action}", f"{count:,}")
    console.print(table)
    # The same summary for scripts, on stdout.
    print(json.dumps({"rows": summary.rows, "status": summary.status, "exits": summary.exits}))
    return 0


#: Written last into a finished output folder, with the run's summary.
SUCCESS_MARKER = "_SUCCESS"


def _staging(out: Path, overwrite: bool) -> Path:
    """A fresh folder beside ``out`` that the run writes into; ``out`` is
    replaced by it only when the run succeeds (see ``_publish``)."""
    if out.is_symlink():
        raise UsageError(f"--out {out} is a symbolic link; give a folder (links are not followed)")
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise UsageError(f"--out {out} is not empty; add --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


def _publish(staging: Path, out: Path) -> None:
    """Puts the finished ``staging`` folder at ``out`` by renames: a reader
    sees the old output or the new one, never half of one."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / "out")
    os.rename(staging, out)
    shutil.rmtree(old)  # does not follow symbolic links inside the old output


def _evaluate(args: argparse.Namespace, fences: FenceSet, out: Path, console: Any) -> Summary:
    """Run the chosen engine under one progress display: rows done of the
    input's rows, rate and time left (the Dask engine reports a partition's
    rows as it finishes)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TimeRemainingColumn,
    )

    total = sum(count_rows(p) for p in args.inputs) if not args.no_progress else None
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(bar_width=24),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=args.no_progress,
    ) as bar:
        task = bar.add_task("rows", total=total)

        def advance(rows: int) -> None:
            bar.advance(task, rows)

        if args.engine == "dask":
            return run_dask(
                args.inputs,
                fences,
                out,
                args.format,
                args.chunk_rows,
                args.scheduler,
                args.partitions,
                advance,
                args.sort_within_trail,
            )
        return run_local(
            args.inputs,
            fences,
            out,
            args.format,
            args.chunk_rows,
            advance,
            args.sort_within_trail,
        )
