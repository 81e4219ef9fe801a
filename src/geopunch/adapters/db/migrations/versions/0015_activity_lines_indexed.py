"""PostgreSQL's index by start holds each activity's end and line as payload
(INCLUDE), so that a listed page is read from the index alone once vacuum has
marked its heap pages all-visible. An index entry cannot pass about 2,700
bytes there, so a line longer than 2,000 bytes is no longer kept, on either
store: such a row is listed from its columns (see tables.py).

Servers of the release before may keep running while it runs: on a
populated table the index is rebuilt CONCURRENTLY (docs/operations.md,
Upgrading).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

#: The rule as this revision set it (the store's LONGEST_KEPT_LINE may move on).
_LONGEST = 2000
_BY_START = ["account_id", "time_clock_id", "start_ts", "id"]
_NEXT = "ix_activities_start_next"


def upgrade() -> None:
    op.execute(sa.text(f"UPDATE activities SET encoded = NULL WHERE length(encoded) > {_LONGEST}"))
    if op.get_bind().dialect.name == "postgresql":
        _rebuild_by_start(include=["end_ts", "encoded"])


def downgrade() -> None:
    # The lines set aside stay NULL: a listed page encodes them from the columns.
    if op.get_bind().dialect.name == "postgresql":
        _rebuild_by_start(include=[])


def _rebuild_by_start(include: list[str]) -> None:
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
        op.create_index("ix_activities_start", "activities", _BY_START, postgresql_include=include)
        return
    with op.get_context().autocommit_block():
        op.execute(sa.text(f"DROP INDEX CONCURRENTLY IF EXISTS {_NEXT}"))
        op.create_index(
            _NEXT,
            "activities",
            _BY_START,
            postgresql_include=include,
            postgresql_concurrently=True,
        )
        op.execute(sa.text("DROP INDEX CONCURRENTLY IF EXISTS ix_activities_start"))
        op.execute(sa.text(f"ALTER INDEX {_NEXT} RENAME TO ix_activities_start"))
