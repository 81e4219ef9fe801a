"""The change feed's identity and how far it has been pruned: a saved fence
index (a checkpoint file) is used at start-up only if it was made from this
store's feed and the feed still holds every change made after it.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    feed = op.create_table(
        "index_feed",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("pruned_through", sa.BigInteger, nullable=False),
    )
    # Changes pruned before this revision are unknown: count all up to the
    # newest as pruned, so that no checkpoint predating this counts as complete.
    newest = op.get_bind().execute(sa.text("SELECT max(seq) FROM index_changes")).scalar()
    op.bulk_insert(feed, [{"id": uuid.uuid4().hex, "pruned_through": int(newest or 0)}])


def downgrade() -> None:
    op.drop_table("index_feed")
