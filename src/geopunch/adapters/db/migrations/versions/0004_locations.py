"""Live trails: last accepted sample time and the fences inside, per (user, clock).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "live_trails",
        sa.Column("user_id", sa.BigInteger, primary_key=True),
        sa.Column("time_clock_id", sa.BigInteger, primary_key=True),
        sa.Column("last_ts", sa.BigInteger, nullable=False),
        sa.Column("inside", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("live_trails")
