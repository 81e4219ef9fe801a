"""The live webhook deliverers, so that processes and replicas share the
subscriptions evenly instead of the first one holding them all.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_deliverers",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("alive_until", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("webhook_deliverers")
