"""Activities (shifts and breaks) with one open per user and clock; idempotency keys.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _punch(prefix: str, required: bool) -> list[sa.Column[object]]:
    nullable = not required
    return [
        sa.Column(f"{prefix}_ts", sa.BigInteger, nullable=nullable),
        sa.Column(f"{prefix}_tz", sa.String(64), nullable=nullable),
        sa.Column(f"{prefix}_address", sa.String(1000), nullable=True),
        sa.Column(f"{prefix}_lat", sa.Float, nullable=True),
        sa.Column(f"{prefix}_lon", sa.Float, nullable=True),
        sa.Column(f"{prefix}_accuracy", sa.Float, nullable=True),
        sa.Column(f"{prefix}_source", sa.String(32), nullable=nullable),
        sa.Column(f"{prefix}_geofence_id", sa.String(64), nullable=True),
    ]


def upgrade() -> None:
    op.create_table(
        "activities",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("time_clock_id", sa.BigInteger, sa.ForeignKey("time_clocks.id"), nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("job_id", sa.String(128), nullable=True),
        sa.Column("break_type_id", sa.String(128), nullable=True),
        sa.Column("scheduler_shift_id", sa.String(128), nullable=True),
        sa.Column("from_shift_id", sa.String(64), nullable=True),
        *_punch("start", required=True),
        *_punch("end", required=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("modified_at", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ux_activities_one_open",
        "activities",
        ["time_clock_id", "user_id"],
        unique=True,
        sqlite_where=sa.text("end_ts IS NULL"),
        postgresql_where=sa.text("end_ts IS NULL"),
    )
    op.create_index("ix_activities_user", "activities", ["time_clock_id", "user_id", "end_ts"])
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_index("ix_activities_user", "activities")
    op.drop_index("ux_activities_one_open", "activities")
    op.drop_table("activities")
