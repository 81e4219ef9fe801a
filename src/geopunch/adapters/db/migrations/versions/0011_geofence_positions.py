"""Geofence positions count per time clock: the index on (account, clock)
takes the position too, so a new fence's position is one index probe
instead of a scan of every geofence (which made bulk loads slow down as
they went).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_geofences_clock", table_name="geofences")
    op.create_index("ix_geofences_clock", "geofences", ["account_id", "time_clock_id", "position"])


def downgrade() -> None:
    op.drop_index("ix_geofences_clock", table_name="geofences")
    op.create_index("ix_geofences_clock", "geofences", ["account_id", "time_clock_id"])
