"""Rebuilding the activities' index by start on PostgreSQL without stopping
the servers that still write them (revisions 0015 and 0016)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

BY_START = ["account_id", "time_clock_id", "start_ts", "id"]
_NEXT = "ix_activities_start_next"


def rebuild_by_start(include: list[str]) -> None:
    """Build the new index beside the old one, then swap them. Both builds
    and the drop run CONCURRENTLY, outside a transaction (which commits the
    revisions before this one): servers still running on the store keep
    writing activities meanwhile, where a plain rebuild would stop every
    read and write of the table for as long as the build takes (minutes on
    millions of rows). A build stopped part way leaves an invalid index
    under the new name, dropped on the next run; one stopped after the old
    index went is simply built again. An empty table is rebuilt in the
    revision's transaction."""
    if not op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM activities)")).scalar():
        # Nothing to index (a new store): no one can be waiting on the table,
        # and the builds' waits for other transactions would be for nothing.
        op.drop_index("ix_activities_start", "activities")
        op.create_index("ix_activities_start", "activities", BY_START, postgresql_include=include)
        return
    with op.get_context().autocommit_block():
        op.execute(sa.text(f"DROP INDEX CONCURRENTLY IF EXISTS {_NEXT}"))
        op.create_index(
            _NEXT,
            "activities",
            BY_START,
            postgresql_include=include,
            postgresql_concurrently=True,
        )
        op.execute(sa.text("DROP INDEX CONCURRENTLY IF EXISTS ix_activities_start"))
        op.execute(sa.text(f"ALTER INDEX {_NEXT} RENAME TO ix_activities_start"))
