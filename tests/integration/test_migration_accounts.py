"""A store made by the release before accounts (revision 0006), with a row in
every table, is migrated into the default account: everything reads back
there, nothing of it is visible to a new account, and the ids stay free in
that new account."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, func, select, text

from geopunch.adapters.activity_messages import encode_line
from geopunch.adapters.db.store import (
    HEAD_REVISION,
    SqlUnitOfWorkFactory,
    _alembic_config,
    make_engine,
    migrate,
)
from geopunch.adapters.db.tables import metadata
from geopunch.domain.accounts import DEFAULT_ACCOUNT
from geopunch.domain.models import DayStatus
from geopunch.domain.ports import PageQuery
from tests.helpers import pg_schema

#: One row for each table of revision 0006, as that release wrote them.
V6_ROWS = [
    """INSERT INTO time_clocks VALUES (7, 'Depot', 'Europe/Paris', true, true,
       'REQUIRE_INSIDE', 25.0, 10, 50, 300, 100, 50, 1700000000, 1700000000)""",
    "INSERT INTO time_clock_jobs VALUES (7, 'job-a', 0, 'Job A', NULL, '#123456')",
    "INSERT INTO time_clock_users VALUES (7, 9170357)",
    "INSERT INTO manual_break_types VALUES (7, 'lunch', 0, 'Lunch', true, 1800)",
    "INSERT INTO day_statuses VALUES (7, 9170357, '2026-01-05', 'LOCKED')",
    """INSERT INTO geofences VALUES ('fence-1', 7, 0, 'Gate', true, 150,
       'autoClockOut', '1 Road', 48.85, 2.35, 1700000000)""",
    "INSERT INTO geofence_jobs VALUES ('fence-1', 'job-a', 7, 0)",
    """INSERT INTO activities (id, time_clock_id, user_id, kind, job_id, start_ts,
       start_tz, start_source, created_at, modified_at)
       VALUES ('shift-1', 7, 9170357, 'shift', 'job-a', 1700000100, 'Europe/Paris',
       'timeClock', 1700000100, 1700000100)""",
    "INSERT INTO idempotency_keys VALUES ('idem-1', 'ClockIn', 'abc', :blob, 1700000100)",
    "INSERT INTO schedulers VALUES (8, 'Store', 'Europe/Paris', false, 1700000000, 1700000000)",
    "INSERT INTO scheduler_jobs VALUES (8, 'job-s', 0, 'Sales', NULL, '#E91E63')",
    "INSERT INTO scheduler_users VALUES (8, 9170357)",
    """INSERT INTO scheduled_shifts VALUES ('s1', 8, 1700100000, 1700110000, 'Morning',
       'job-s', 'Europe/Paris', true, false, NULL, NULL, '#E91E63', :body, NULL,
       1700000000, 1700000000)""",
    "INSERT INTO shift_users VALUES ('s1', 9170357, 0)",
    """INSERT INTO events VALUES (1, 'shiftPublished', 1700000000, NULL, 8, 9170357,
       :payload)""",
    "INSERT INTO live_trails VALUES (9170357, 7, 1700000200, :inside)",
    "INSERT INTO index_changes (time_clock_id, changed_at) VALUES (7, 1700000000)",
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def v6_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'v6.db'}")
        yield engine
        engine.dispose()
        return
    with pg_schema() as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


def test_a_store_of_the_release_before_accounts_moves_into_the_default_account(
    v6_engine: Engine,
) -> None:
    with v6_engine.connect() as conn:
        command.upgrade(_alembic_config(conn), "0006")
        conn.commit()
    params = {
        "blob": b"\x08\x01",
        "body": json.dumps(
            {
                "location": None,
                "notes": [],
                "breaks": [],
                "statuses": [],
                "details": None,
                "customFields": [],
            }
        ),
        "payload": json.dumps({"shiftId": "s1"}),
        "inside": json.dumps(["fence-1"]),
    }
    with v6_engine.begin() as conn:
        for sql in V6_ROWS:
            conn.execute(text(sql), {k: v for k, v in params.items() if f":{k}" in sql})
        before = {
            t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in metadata.tables
            # made by later revisions
            if t
            not in (
                "accounts",
                "api_keys",
                "event_horizon",
                "webhook_subscriptions",
                "webhook_attempts",
                "event_sinks",
                "index_feed",
                "webhook_deliverers",
            )
        }

    assert migrate(v6_engine) == HEAD_REVISION

    with v6_engine.connect() as conn:
        after = {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in metadata.sorted_tables
        }
        assert conn.execute(text("SELECT id, name FROM accounts")).all() == [(1, "default")]
        for t in metadata.sorted_tables:
            if "account_id" in t.c and t.name not in ("api_keys", "webhook_subscriptions"):
                owners = conn.execute(select(t.c.account_id).distinct()).scalars().all()
                assert owners == [DEFAULT_ACCOUNT], t.name
    assert {t: after[t] for t in before} == before

    uows = SqlUnitOfWorkFactory(v6_engine)
    with uows(account=DEFAULT_ACCOUNT, readonly=True) as uow:
        tc = uow.time_clocks.get(7)
        assert tc is not None and tc.name == "Depot" and tc.user_ids == frozenset({9170357})
        assert [j.id for j in tc.jobs] == ["job-a"]
        assert [b.id for b in tc.manual_break_types] == ["lunch"]
        assert uow.time_clocks.day_statuses(7, 9170357) == {date(2026, 1, 5): DayStatus.LOCKED}
        rows = uow.geofences.enabled_rows()
        assert (rows.ids.tolist(), rows.job_ids) == ([b"fence-1"], {0: ("job-a",)})
        (shift,) = uow.activities.list_for(7, 9170357)
        assert shift.id == "shift-1" and shift.end is None
        (row,) = uow.activities.page(PageQuery(7, 1700000000, 1700001000, [], [], None, 10))
        assert uow.idempotency.get("idem-1") == ("ClockIn", "abc", b"\x08\x01")
        sched = uow.schedulers.get(8)
        assert sched is not None and sched.user_ids == frozenset({9170357})
        s1 = uow.shifts.get("s1")
        assert s1 is not None and s1.assigned_user_ids == (9170357,)
        (event,) = uow.events.after(0)
        assert event.type == "shiftPublished"
        assert set(uow.locations.load([9170357])) == {(9170357, 7)}
        ((seq, acct, tc_id),) = uow.index_changes.after(0)
        assert (acct, tc_id) == (DEFAULT_ACCOUNT, 7)
        # Changes from before the feed had an identity count as pruned: no
        # checkpoint of the fence index can predate them.
        assert uow.index_changes.identity()[1] == seq

    with v6_engine.connect() as conn:  # revision 0014 encoded the stored activity
        assert conn.execute(text("SELECT encoded FROM activities")).scalar_one() == encode_line(row)

    # A new account sees none of it, and may use the same ids.
    with uows() as uow:
        other = uow.accounts.create("other").id
        uow.commit()
    with uows(account=other, readonly=True) as uow:
        assert uow.time_clocks.get(7) is None
        assert len(uow.geofences.enabled_rows()) == 0
        assert uow.activities.list_for(7, 9170357) == []
        assert uow.idempotency.get("idem-1") is None
        assert uow.schedulers.get(8) is None
        assert uow.shifts.get("s1") is None
        assert uow.events.after(0) == []
        assert uow.locations.load([9170357]) == {}
