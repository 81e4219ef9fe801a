"""PostgreSQL connections the server drops: the pool pings a connection only
after it has idled (one just given back goes out again as it is, one that
idled is checked, and a dead one replaced), and work whose connection is
lost under it is answered as the store being unreachable."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text

from geopunch.adapters.db import store
from geopunch.adapters.db.faults import unavailable_reason
from geopunch.adapters.db.store import GroupCommitter, SqlUnitOfWorkFactory, make_engine, migrate
from geopunch.domain.accounts import DEFAULT_ACCOUNT
from geopunch.domain.errors import StoreUnavailable
from geopunch.domain.ports import UnitOfWork
from tests.helpers import PG_URL, pg_schema

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine() -> Iterator[Engine]:
    with pg_schema() as url:
        made = make_engine(url, pool_size=2)
        try:
            yield made
        finally:
            made.dispose()


def _pings(engine: Engine) -> list[object]:
    """Records each ping the pool sends (the dialect's own ping still runs)."""
    seen: list[object] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_conn: Any) -> bool:
        seen.append(dbapi_conn)
        return ping(dbapi_conn)

    engine.dialect.do_ping = counted  # type: ignore[method-assign,assignment]
    return seen


def _backend(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(pid: int) -> None:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            # With a timeout it returns once the backend has ended, not when told to.
            ended = text("SELECT pg_terminate_backend(CAST(:p AS integer), 5000)")
            assert conn.execute(ended, {"p": pid}).scalar_one()
    finally:
        admin.dispose()


def test_a_connection_given_back_just_now_is_not_pinged(engine: Engine) -> None:
    pings = _pings(engine)
    first = _backend(engine)
    for _ in range(50):  # one after another, as a busy server's calls come
        assert _backend(engine) == first  # the one given back last goes out first
    assert pings == []
    time.sleep(store.PING_AFTER_IDLE_S + 0.1)
    assert _backend(engine) == first
    assert len(pings) == 1  # idle past the window: checked once, then used


def test_a_connection_the_server_dropped_while_it_idled_is_replaced_unseen(
    engine: Engine,
) -> None:
    pings = _pings(engine)
    dropped = _backend(engine)
    _terminate(dropped)
    time.sleep(store.PING_AFTER_IDLE_S + 0.1)
    assert _backend(engine) != dropped  # the ping found it dead: a new one served
    assert len(pings) == 1


def test_a_connection_dropped_within_the_window_fails_one_use_as_unreachable(
    engine: Engine,
) -> None:
    """The price of not pinging: the one use answers "retry", and the pool
    drops the connection (and those older) so the next use succeeds."""
    dropped = _backend(engine)
    _terminate(dropped)
    with pytest.raises(Exception) as failed:
        _backend(engine)
    assert unavailable_reason(failed.value) == "unreachable"
    assert _backend(engine) != dropped


def test_a_batch_whose_connection_is_lost_under_it_is_answered_unreachable(
    engine: Engine,
) -> None:
    """The piece's statement fails on the lost connection, and so does the
    rollback at the end of the batch. The rollback's failure was raised over
    the pieces' own outcomes and answered as an internal error."""
    migrate(engine)
    committer = GroupCommitter(SqlUnitOfWorkFactory(engine))

    own_backend: list[int] = []  # the batch's connection, noted at its BEGIN

    @event.listens_for(engine, "begin")
    def _note(conn: Any) -> None:
        own_backend[:] = [int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())]

    def cut_under_it(uow: UnitOfWork) -> None:
        keys = uow.for_account(DEFAULT_ACCOUNT).idempotency
        assert keys.get("before") is None  # the transaction is open
        _terminate(own_backend[0])
        keys.get("after")

    try:
        with pytest.raises(StoreUnavailable) as failed:
            committer.run(cut_under_it)
        assert failed.value.reason == "unreachable"
        event.remove(engine, "begin", _note)
        again = committer.run(lambda uow: uow.for_account(DEFAULT_ACCOUNT).idempotency.get("k"))
        assert again is None
    finally:
        committer.close()
