"""Wires a Config into the store, the use cases' dependencies and the gRPC server."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine, migrate
from geopunch.config import Config

log = logging.getLogger("geopunch")


@dataclass(frozen=True, slots=True)
class App:
    """Everything the servicers need, built once at start-up."""

    engine: Engine
    uows: SqlUnitOfWorkFactory


def build_app(config: Config) -> App:
    """Open and migrate the store; return the wired application."""
    engine = make_engine(config.database_url, pool_size=min(config.max_workers, 32))
    revision = migrate(engine)
    log.info(
        "store ready",
        extra={"fields": {"dialect": engine.dialect.name, "revision": revision}},
    )
    return App(engine=engine, uows=SqlUnitOfWorkFactory(engine))
