"""Stores to run the integration tests on: SQLite always, PostgreSQL when configured."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from geopunch.adapters.db.store import make_engine
from tests.helpers import pg_migrated, seeded_sqlite


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """A fresh store at the newest revision, on each store (on SQLite a copy
    of one migrated once per process: a migration takes 120-240 ms)."""
    if request.param == "sqlite":
        eng = seeded_sqlite(tmp_path_factory.mktemp("db") / "store.db", [])
        yield eng
        eng.dispose()
    else:
        with pg_migrated() as url:
            eng = make_engine(url)
            try:
                yield eng
            finally:
                eng.dispose()
