"""Where one 10,000-row page of ListTimeActivities spends its time, in process.

    python3 dev.py run bench/timesheets_inproc.py [--database-url URL] [--rows 20000]

Stores ``--rows`` completed shifts (a location on both ends) in a fresh
store (SQLite by default), then times, best of seven: a plain read of 10,000
of the rows into tuples (``sqlite3`` or ``psycopg``), the repository's
``page`` (the same read through SQLAlchemy, as flat ``ActivityRow`` tuples),
the building of the domain ``Activity`` objects from the same rows (what the
page built before it gave rows, and what totals still build), filling the
gRPC answer from the page (``fill_activity_row``) and serializing it (what a
gRPC page cost before the store kept each activity's line), and the page as
the gRPC servicer reads it now: the kept lines joined by the database
(``page_lines``). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
from collections.abc import Callable
from typing import Any

from engine import best_of
from replicas import schema
from sqlalchemy import select

from geopunch.adapters.activity_messages import fill_activity_row
from geopunch.adapters.db import repositories
from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine, migrate
from geopunch.domain.accounts import DEFAULT_ACCOUNT
from geopunch.domain.models import Job, TimeClock
from geopunch.domain.ports import EncodedPage, PageQuery
from geopunch.domain.punches import (
    Activity,
    ActivityKind,
    ActivityRow,
    PunchLocation,
    PunchPoint,
)
from geopunch.v1 import timeclock_pb2

PAGE = 10_000
TC = 77


def best_ms(fn: Callable[[], Any], n: int = 7) -> float:
    return round(best_of(n, fn)[0] * 1e3, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url", default=None, help="PostgreSQL; default: SQLite")
    ap.add_argument("--rows", type=int, default=20_000)
    args = ap.parse_args()
    if args.database_url:
        with schema(args.database_url) as scoped:  # a schema of its own, dropped after
            measure(scoped, args.rows)
    else:
        measure(f"sqlite:///{tempfile.mkdtemp()}/list.db", args.rows)


def measure(url: str, count: int) -> None:
    engine = make_engine(url)
    migrate(engine)
    uows = SqlUnitOfWorkFactory(engine)
    with uows(account=DEFAULT_ACCOUNT) as uow:
        users = frozenset(range(count))
        uow.time_clocks.add(
            TimeClock(id=TC, name="c", timezone="UTC", jobs=(Job("a"),), user_ids=users)
        )
        made = []
        for i in range(count):
            where = PunchLocation("1 Road", 48.0, 11.0, 5.0)
            start = PunchPoint(1_000_000 + i * 10, "UTC", where, "api", None)
            end = PunchPoint(1_000_000 + i * 10 + 5, "UTC", where, "api", None)
            made.append(
                Activity(
                    f"id{i:08d}", TC, i, ActivityKind.SHIFT, start, end, "a", None, None, None, 1, 1
                )
            )
        uow.activities.add_many(made)
        uow.commit()

    def page() -> list[ActivityRow]:
        with uows(account=DEFAULT_ACCOUNT, readonly=True) as uow:
            return uow.activities.page(PageQuery(TC, 0, 2**40, [], [], None, PAGE))

    def lines() -> EncodedPage:
        with uows(account=DEFAULT_ACCOUNT, readonly=True) as uow:
            return uow.activities.page_lines(PageQuery(TC, 0, 2**40, [], [], None, PAGE))

    table = repositories.activities
    query = (
        select(table)
        .where(table.c.time_clock_id == TC)
        .order_by(table.c.start_ts, table.c.id)
        .limit(PAGE)
    )
    with uows(account=DEFAULT_ACCOUNT, readonly=True) as uow:
        rows = uow._conn.execute(query).all()
    listed = page()

    def build() -> list[Activity]:
        return [repositories._activity_of(r) for r in rows]

    def answer() -> bytes:
        msg = timeclock_pb2.ListTimeActivitiesResponse()
        for a in listed:
            fill_activity_row(msg.data.time_activities.add(), a)
        return msg.SerializeToString()

    sql = f"SELECT * FROM activities WHERE time_clock_id = {TC} ORDER BY start_ts, id LIMIT {PAGE}"
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1]

        def plain() -> list[Any]:
            conn = sqlite3.connect(path)
            out = conn.execute(sql).fetchall()
            conn.close()
            return out
    else:
        import psycopg

        dsn = url.replace("postgresql+psycopg://", "postgresql://")

        def plain() -> list[Any]:
            with psycopg.connect(dsn) as conn:
                return conn.execute(sql).fetchall()

    figures = {
        "plain_read_ms": best_ms(plain),
        "page_ms": best_ms(page),
        "build_activities_ms": best_ms(build),
        "fill_and_serialize_ms": best_ms(answer),
        "page_lines_ms": best_ms(lines),
    }
    figures["page_and_answer_over_plain"] = round(
        (figures["page_ms"] + figures["fill_and_serialize_ms"]) / figures["plain_read_ms"], 2
    )
    figures["page_lines_over_plain"] = round(figures["page_lines_ms"] / figures["plain_read_ms"], 2)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
