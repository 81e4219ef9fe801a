"""PostgreSQL connections the server drops: work whose connection is lost
under it is answered as the store being unreachable."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text

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


def _terminate(pid: int) -> None:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            # With a timeout it returns once the backend has ended, not when told to.
            ended = text("SELECT pg_terminate_backend(CAST(:p AS integer), 5000)")
            assert conn.execute(ended, {"p": pid}).scalar_one()
    finally:
        admin.dispose()


def test_a_batch_whose_connection_is_lost_under_it_is_answered_unreachable(
    engine: Engine,
) -> None:
    """The piece's statement fails on the lost connection, and so does the
    rollback at the end of the batch. The rollback's failure was raised over
    the pieces' own outcomes and answered as an internal error."""
    migrate(engine)
    committer = GroupCommitter(SqlUnitOfWorkFactory(engine))

    def cut_under_it(uow: UnitOfWork) -> None:
        keys = uow.for_account(DEFAULT_ACCOUNT).idempotency
        assert keys.get("before") is None  # the transaction is open
        _terminate(_own_backend[0])
        keys.get("after")

    _own_backend: list[int] = []

    @event.listens_for(engine, "begin")
    def _note(conn: Any) -> None:
        _own_backend[:] = [int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())]

    try:
        with pytest.raises(StoreUnavailable) as failed:
            committer.run(cut_under_it)
        assert failed.value.reason == "unreachable"
        event.remove(engine, "begin", _note)
        again = committer.run(lambda uow: uow.for_account(DEFAULT_ACCOUNT).idempotency.get("k"))
        assert again is None
    finally:
        committer.close()
