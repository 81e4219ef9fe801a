"""Time activities: notes, paid break types, listing by time, and overlaps
refused by PostgreSQL itself.

SQLite writers take the write lock before they read (``BEGIN IMMEDIATE``), so
the overlap check of a use case and its write are one step there. PostgreSQL
runs writers side by side, so there an exclusion constraint (``btree_gist``)
refuses a second activity of a user that overlaps one committed meanwhile;
the use case then runs again and names the overlap. An open activity's range
runs to infinity.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("activities") as batch:
        batch.add_column(sa.Column("notes", sa.String(2000), nullable=True))
    with op.batch_alter_table("manual_break_types") as batch:
        batch.add_column(
            sa.Column("is_paid", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.create_index(
        "ix_activities_start",
        "activities",
        ["account_id", "time_clock_id", "start_ts", "id"],
    )
    if op.get_bind().dialect.name == "postgresql":
        # In the public schema: one that a schema-per-tenant deployment drops
        # must not take the constraints of the others with it.
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA public")
        op.execute(
            "ALTER TABLE activities ADD CONSTRAINT ex_activities_no_overlap EXCLUDE USING gist "
            "(account_id WITH =, time_clock_id WITH =, user_id WITH =, "
            "int8range(start_ts, end_ts) WITH &&)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE activities DROP CONSTRAINT ex_activities_no_overlap")
    op.drop_index("ix_activities_start", "activities")
    with op.batch_alter_table("manual_break_types") as batch:
        batch.drop_column("is_paid")
    with op.batch_alter_table("activities") as batch:
        batch.drop_column("notes")
