"""Start-up time and memory of a server holding many fences, against a plain read.

    python3 dev.py run bench/startup.py [--clocks 10000] [--per-clock 100]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Stores the seeded fleet of ``fleet.py`` (10,000 clocks x 100 fences is
1,000,000 fences, a fifth of them bound to a job) through the repositories,
in a fresh SQLite file or a PostgreSQL schema of its own. Then, in the same
run:

- the baseline: a plain read of the same fence rows (the columns the index
  needs, in the same order) into tuples, with ``sqlite3`` or a ``psycopg``
  cursor, best of three;
- ``geopunch serve`` (one process) on an empty store and on the full one:
  seconds from launch to the ready line (every worker answers health checks
  with ``SERVING``), resident memory once ready and its peak (``VmHWM``).
  The full store is started twice: cold, without a checkpoint of the fence
  index (it reads every row and builds the index, then saves it), and warm,
  from the checkpoint the cold start left (``--index-checkpoint``); with
  ``--changed N``, after noting N time clocks as changed in the feed, which
  the warm start reads again.

Prints JSON: the start-up ratio to the plain read, memory growth per fence
(full minus empty, over the fences) and peak over steady.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from fleet import make_fleet
from replicas import schema
from sqlalchemy import text

from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine, migrate
from geopunch.domain.accounts import DEFAULT_ACCOUNT

API_KEY = "bench-key-0123456789"
#: The rows a start-up reads, as a plain query.
FENCE_ROWS = (
    "SELECT time_clock_id, id, latitude, longitude, fence_size_m, exit_action FROM geofences "
    "WHERE account_id = {account} AND is_enabled ORDER BY time_clock_id, position, id"
)


def store(url: str, clocks: int, per_clock: int) -> int:
    fleet = make_fleet(clocks, per_clock, points=0)
    engine = make_engine(url)
    migrate(engine)
    uows = SqlUnitOfWorkFactory(engine)
    by_clock: dict[int, list[Any]] = {}
    for f in fleet.fences:
        by_clock.setdefault(f.time_clock_id, []).append(f)
    for start in range(0, len(fleet.time_clocks), 500):
        with uows(account=DEFAULT_ACCOUNT) as uow:
            for tc in fleet.time_clocks[start : start + 500]:
                uow.time_clocks.add(tc)
                uow.geofences.add_many(by_clock.get(tc.id, []))
            uow.commit()
    # A store at rest has its planner statistics (autovacuum gathers them
    # soon after a load this size); without them PostgreSQL plans the
    # start-up's join for 300 rows, twice as slow (bench/README.md).
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    engine.dispose()
    return len(fleet.fences)


def note_changes(url: str, clocks: int) -> None:
    """Record ``clocks`` time clocks as changed in the feed (as another
    replica's writes would): the warm start reads each of them again."""
    engine = make_engine(url)
    uows = SqlUnitOfWorkFactory(engine)
    with uows(account=DEFAULT_ACCOUNT) as uow:
        for tc in uow.time_clocks.list_all()[:clocks]:
            uow.index_changes.note(tc.id)
        uow.commit()
    engine.dispose()


def plain_read(url: str) -> float:
    sql = FENCE_ROWS.format(account=DEFAULT_ACCOUNT)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        if url.startswith("sqlite"):
            conn = sqlite3.connect(url.removeprefix("sqlite:///"))
            rows = conn.execute(sql).fetchall()
            conn.close()
        else:
            import psycopg

            dsn, _, options = url.removeprefix("postgresql+psycopg://").partition("?options=")
            path = options.replace("%3D", "=")
            with psycopg.connect(f"postgresql://{dsn}", options=path) as conn:
                rows = conn.execute(sql).fetchall()
        best = min(best, time.perf_counter() - started)
        assert rows
    return best


def _memory(pid: int) -> tuple[int, int]:
    """Resident and peak resident bytes of a process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def start_up(url: str, checkpoint: Path) -> dict[str, float]:
    env = {
        "GEOPUNCH_INDEX_CHECKPOINT": str(checkpoint),
        **os.environ,
        "GEOPUNCH_API_KEYS": API_KEY,
        "GEOPUNCH_LOG_LEVEL": "WARNING",
        "GEOPUNCH_DATABASE_URL": url,
        "GEOPUNCH_LISTEN": "127.0.0.1:0",
        "GEOPUNCH_PROCESSES": "1",
        "GEOPUNCH_HTTP_LISTEN": "off",
    }
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "geopunch", "serve"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        if not proc.stdout.readline():
            raise RuntimeError(f"the server exited with {proc.wait(30)}")
        ready = time.perf_counter() - started
        time.sleep(2)  # let the compaction thread and the allocator settle
        rss, peak = _memory(proc.pid)
        return {"ready_s": round(ready, 3), "rss_mib": rss / 2**20, "peak_mib": peak / 2**20}
    finally:
        proc.terminate()  # a cold start's checkpoint is complete once it has stopped
        proc.wait(120)


@contextmanager
def fresh_store(url: str | None, name: str, keep: Path | None = None) -> Iterator[str]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{keep / name}"
    elif url is None:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / name}"
    else:
        with schema(url) as scoped:
            yield scoped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clocks", type=int, default=10_000)
    parser.add_argument("--per-clock", type=int, default=100)
    parser.add_argument("--database-url")
    parser.add_argument(
        "--keep",
        type=Path,
        help="SQLite only: keep the stores in this directory and reuse them on the next run "
        "(storing a million fences takes minutes)",
    )
    parser.add_argument(
        "--changed",
        type=int,
        default=0,
        help="time clocks noted as changed between the cold and the warm start "
        "(the warm start replays them from the feed)",
    )
    args = parser.parse_args()
    with ExitStack() as stack:
        empty = stack.enter_context(fresh_store(args.database_url, "empty.db", args.keep))
        name = f"full-{args.clocks}x{args.per_clock}.db"
        full = stack.enter_context(fresh_store(args.database_url, name, args.keep))
        migrate(make_engine(empty))
        started = time.perf_counter()
        if args.keep is not None and (args.keep / name).exists():
            fences = args.clocks * args.per_clock
        else:
            fences = store(full, args.clocks, args.per_clock)
        stored_s = time.perf_counter() - started
        read_s = plain_read(full)
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        idle = start_up(empty, scratch / "empty.fence-index")
        saved = scratch / "full.fence-index"
        loaded = start_up(full, saved)
        checkpoint_mib = saved.stat().st_size / 2**20
        if args.changed:
            note_changes(full, args.changed)
        warm = start_up(full, saved)
        steady = loaded["rss_mib"] * 2**20
    print(
        json.dumps(
            {
                "fences": fences,
                "stored_s": round(stored_s, 1),
                "plain_read_s": round(read_s, 3),
                "empty": idle,
                "full": loaded,
                "warm": warm,
                "changed_before_warm": args.changed,
                "checkpoint_mib": round(checkpoint_mib, 1),
                "start_up_vs_plain_read": round(loaded["ready_s"] / read_s, 2),
                "warm_start_up_vs_plain_read": round(warm["ready_s"] / read_s, 2),
                "warm_rss_growth_b_per_fence": round(
                    (warm["rss_mib"] - idle["rss_mib"]) * 2**20 / max(fences, 1), 1
                ),
                "warm_peak_over_steady": round(warm["peak_mib"] / warm["rss_mib"], 2),
                "rss_growth_b_per_fence": round(
                    (steady - idle["rss_mib"] * 2**20) / max(fences, 1), 1
                ),
                "peak_over_steady": round(loaded["peak_mib"] * 2**20 / steady, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
