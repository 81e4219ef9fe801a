"""Time clocks, their jobs, users, break types and day statuses; geofences.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "time_clocks",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("job_enforcement", sa.Boolean, nullable=False),
        sa.Column("manual_breaks_enabled", sa.Boolean, nullable=False),
        sa.Column("geofence_policy", sa.String(32), nullable=False),
        sa.Column("accuracy_tolerance_m", sa.Float, nullable=False),
        sa.Column("exit_high_accuracy_max_m", sa.Float, nullable=False),
        sa.Column("exit_buffer_high_accuracy_m", sa.Float, nullable=False),
        sa.Column("exit_low_accuracy_max_m", sa.Float, nullable=False),
        sa.Column("exit_buffer_low_accuracy_m", sa.Float, nullable=False),
        sa.Column("exit_buffer_unknown_accuracy_m", sa.Float, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "time_clock_jobs",
        sa.Column(
            "time_clock_id", sa.BigInteger, sa.ForeignKey("time_clocks.id"), primary_key=True
        ),
        sa.Column("job_id", sa.String(128), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("parent_job_id", sa.String(128), nullable=True),
    )
    op.create_table(
        "time_clock_users",
        sa.Column(
            "time_clock_id", sa.BigInteger, sa.ForeignKey("time_clocks.id"), primary_key=True
        ),
        sa.Column("user_id", sa.BigInteger, primary_key=True),
    )
    op.create_table(
        "manual_break_types",
        sa.Column(
            "time_clock_id", sa.BigInteger, sa.ForeignKey("time_clocks.id"), primary_key=True
        ),
        sa.Column("break_id", sa.String(128), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("is_mandatory", sa.Boolean, nullable=False),
        sa.Column("min_duration_s", sa.Integer, nullable=False),
    )
    op.create_table(
        "day_statuses",
        sa.Column(
            "time_clock_id", sa.BigInteger, sa.ForeignKey("time_clocks.id"), primary_key=True
        ),
        sa.Column("user_id", sa.BigInteger, primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
    )
    op.create_table(
        "geofences",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("time_clock_id", sa.BigInteger, sa.ForeignKey("time_clocks.id"), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("is_enabled", sa.Boolean, nullable=False),
        sa.Column("fence_size_m", sa.Integer, nullable=False),
        sa.Column("exit_action", sa.String(32), nullable=False),
        sa.Column("address", sa.String(1000), nullable=False),
        sa.Column("latitude", sa.Float, nullable=False),
        sa.Column("longitude", sa.Float, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_geofences_time_clock_id", "geofences", ["time_clock_id"])
    op.create_table(
        "geofence_jobs",
        sa.Column(
            "fence_id",
            sa.String(64),
            sa.ForeignKey("geofences.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("job_id", sa.String(128), primary_key=True),
        sa.Column("time_clock_id", sa.BigInteger, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.ForeignKeyConstraint(
            ["time_clock_id", "job_id"],
            ["time_clock_jobs.time_clock_id", "time_clock_jobs.job_id"],
        ),
    )


def downgrade() -> None:
    for name in (
        "geofence_jobs",
        "geofences",
        "day_statuses",
        "manual_break_types",
        "time_clock_users",
        "time_clock_jobs",
        "time_clocks",
    ):
        op.drop_table(name)
