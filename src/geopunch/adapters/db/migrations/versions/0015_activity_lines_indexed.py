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

from geopunch.adapters.db.migrations.rebuild import rebuild_by_start

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

#: The rule as this revision set it (the store's LONGEST_KEPT_LINE may move on).
_LONGEST = 2000


def upgrade() -> None:
    op.execute(sa.text(f"UPDATE activities SET encoded = NULL WHERE length(encoded) > {_LONGEST}"))
    if op.get_bind().dialect.name == "postgresql":
        rebuild_by_start(include=["end_ts", "encoded"])


def downgrade() -> None:
    # The lines set aside stay NULL: a listed page encodes them from the columns.
    if op.get_bind().dialect.name == "postgresql":
        rebuild_by_start(include=[])
