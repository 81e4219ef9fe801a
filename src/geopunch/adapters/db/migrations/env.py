"""Alembic environment: runs on the connection that geopunch.adapters.db.store passes in."""

from __future__ import annotations

from alembic import context

from geopunch.adapters.db.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
