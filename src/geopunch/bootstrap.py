"""Wires a Config into the store, the use cases' dependencies and the gRPC server."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine, migrate
from geopunch.config import Config
from geopunch.geo.index import FenceIndex
from geopunch.geo.membership import warm_up

log = logging.getLogger("geopunch")


@dataclass(frozen=True, slots=True)
class App:
    """Everything the servicers need, built once at start-up."""

    engine: Engine
    uows: SqlUnitOfWorkFactory
    index: FenceIndex
    #: The index holds every time clock change up to this one (see follow_index_changes).
    index_cursor: int = 0


def build_app(
    config: Config,
    index: FenceIndex | None = None,
    on_events: Callable[[], None] | None = None,
    on_index_changes: Callable[[], None] | None = None,
) -> App:
    """Open and migrate the store, load the fence index; return the wired application.

    ``on_events`` is called after every commit that appended to the event log,
    ``on_index_changes`` after every commit that changed a time clock or its fences.
    """
    engine = make_engine(config.database_url, pool_size=min(config.max_workers, 32))
    revision = migrate(engine)
    log.info(
        "store ready",
        extra={"fields": {"dialect": engine.dialect.name, "revision": revision}},
    )
    uows = SqlUnitOfWorkFactory(engine, on_events, on_index_changes)
    index = index if index is not None else FenceIndex()
    started = time.perf_counter()
    # Loaded under the index's write lock: no change can slip in between.
    with uows(readonly=True) as uow, index.write_lock():
        # The cursor first: a change committed while the rest is read comes
        # after it and is applied again by the follower, which is harmless.
        cursor = uow.index_changes.last()
        snap = index.load(uow.time_clocks.list_all(), uow.geofences.list_enabled())
    warm_up()
    log.info(
        "fence index ready",
        extra={
            "fields": {
                "clocks": len(snap.clocks),
                "fences": snap.fence_count,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            }
        },
    )
    return App(engine=engine, uows=uows, index=index, index_cursor=cursor)
