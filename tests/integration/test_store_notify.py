"""PostgreSQL's change notifications: a process hears what other processes
changed, and of its own changes only the API keys (it applies its events and
index changes as it commits them)."""

from __future__ import annotations

import queue
import threading
import time

import pytest
from sqlalchemy import Engine, text

from geopunch.adapters.db import notify
from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine
from geopunch.bootstrap import SystemClock
from geopunch.domain.accounts import DEFAULT_ACCOUNT as A
from geopunch.domain.accounts import Scope
from geopunch.domain.models import Job, TimeClock
from geopunch.service import accounts, admin
from tests.helpers import pg_schema


def test_what_a_notification_tells_this_process() -> None:
    mine, other = notify.sender(), "0" * 32
    assert notify.news(f"{other}:ei") == "ei"
    assert notify.news(f"{other}:k") == "k"
    assert notify.news(f"{mine}:ei") == ""  # applied as committed
    assert notify.news(f"{mine}:eik") == "k"  # a key is read again, whoever made it
    # A notification of the previous release (no payload) or one not
    # understood: everything may have changed.
    assert notify.news("") == notify.EVERYTHING
    assert notify.news(f"{other}:ex") == notify.EVERYTHING


def test_a_listener_hears_others_changes_and_its_own_keys(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("notifications are PostgreSQL's")
    heard: queue.Queue[str] = queue.Queue()
    stopped = threading.Event()
    listener = threading.Thread(
        target=notify.listen, args=(engine, heard.put, stopped), daemon=True
    )
    listener.start()
    try:
        assert heard.get(timeout=10) == notify.EVERYTHING  # on connecting
        uows = SqlUnitOfWorkFactory(engine)
        # This process's own time clock (an index change and an event): not heard.
        tc = TimeClock(id=41, name="n", timezone="UTC", jobs=(Job("a", "A"),))
        admin.create_time_clock(uows, A, tc, ["jobs[0]"], assign_id=False)
        # Another process's change: heard, after the one above would have been.
        with engine.begin() as conn:
            conn.execute(
                text("SELECT pg_notify(:c, :p)"), {"c": notify.channel(conn), "p": "elsewhere:ei"}
            )
        assert heard.get(timeout=10) == "ei"
        # Another process of a deployment in another schema of the same
        # database: not heard.
        with pg_schema() as url:
            elsewhere = make_engine(url)
            try:
                with engine.connect() as conn:
                    mine = notify.channel(conn)
                with elsewhere.begin() as conn:
                    other = notify.channel(conn)
                    assert other != mine
                    conn.execute(text("SELECT pg_notify(:c, 'elsewhere:e')"), {"c": other})
            finally:
                elsewhere.dispose()
        # This process's own new key: heard, so that its key ring reads it.
        accounts.create_key(uows, SystemClock(), A, frozenset({Scope.READ}))
        assert heard.get(timeout=10) == notify.KEYS
        time.sleep(0.2)
        assert heard.empty(), heard.get_nowait()
    finally:
        stopped.set()
        listener.join(5)
