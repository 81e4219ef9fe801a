"""Event-log retention: when each event was recorded, and how far the log
has been purged (a subscriber resuming from before that is told so).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("recorded_at", sa.BigInteger, nullable=True))
    # Events recorded before this revision: their own time is the best known.
    op.execute("UPDATE events SET recorded_at = occurred_at")
    horizon = op.create_table(
        "event_horizon",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("purged_through", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(horizon, [{"id": 1, "purged_through": 0}])


def downgrade() -> None:
    op.drop_table("event_horizon")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("recorded_at")
