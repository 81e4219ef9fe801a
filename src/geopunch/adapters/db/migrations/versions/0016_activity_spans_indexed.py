"""SQLite's index by start also holds each activity's user, kind and break
type, so that a window's totals read every activity they sum from the index
alone: looking each row up in the table was a third to a half of the read
(see tables.py). Nothing changes on PostgreSQL, whose read of the same rows
from the table measured no slower.

The rebuild holds SQLite's write lock while it runs (about 4 s for 600,000
activities on this project's bench machine): servers of the release before
may keep running, their writes waiting for it.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

from alembic import op

from geopunch.adapters.db.migrations.rebuild import BY_START

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_LINES = [*BY_START, "end_ts", "encoded"]
_SPANS = ["user_id", "kind", "break_type_id"]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index("ix_activities_lines", "activities")
        op.create_index("ix_activities_lines", "activities", [*_LINES, *_SPANS])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index("ix_activities_lines", "activities")
        op.create_index("ix_activities_lines", "activities", _LINES)
