"""Stores to run the integration tests on: SQLite always, PostgreSQL when configured."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from geopunch.adapters.db.store import make_engine, migrate

PG_URL = os.environ.get("GEOPUNCH_TEST_PG_URL", "")


def _pg_engine() -> Iterator[Engine]:
    if not PG_URL:
        if os.environ.get("GEOPUNCH_REQUIRE_PG"):
            pytest.fail("GEOPUNCH_REQUIRE_PG is set but GEOPUNCH_TEST_PG_URL is empty")
        pytest.skip("set GEOPUNCH_TEST_PG_URL to run the store tests on PostgreSQL")
    schema = f"gp_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        if os.environ.get("GEOPUNCH_REQUIRE_PG"):
            raise
        pytest.skip(f"PostgreSQL at {PG_URL} unreachable: {exc}")
    sep = "&" if "?" in PG_URL else "?"
    engine = make_engine(f"{PG_URL}{sep}options=-csearch_path%3D{schema}")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


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
