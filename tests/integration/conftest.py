"""Stores to run the integration tests on: SQLite always, PostgreSQL when configured."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from geopunch.adapters.db.store import make_engine, migrate
from tests.helpers import pg_schema


def _pg_engine() -> Iterator[Engine]:
    with pg_schema() as url:
        engine = make_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("db") / "store.db"
        eng = make_engine(f"sqlite:///{path}")
        migrate(eng)
        yield eng
        eng.dispose()
    else:
        for eng in _pg_engine():
            migrate(eng)
            yield eng
