"""Schedulers with jobs and users, scheduled shifts, the event log; job colors.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("time_clock_jobs", sa.Column("color", sa.String(16), nullable=True))
    op.create_table(
        "schedulers",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("multi_user_shifts", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "scheduler_jobs",
        sa.Column("scheduler_id", sa.BigInteger, sa.ForeignKey("schedulers.id"), primary_key=True),
        sa.Column("job_id", sa.String(128), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("parent_job_id", sa.String(128), nullable=True),
        sa.Column("color", sa.String(16), nullable=True),
    )
    op.create_table(
        "scheduler_users",
        sa.Column("scheduler_id", sa.BigInteger, sa.ForeignKey("schedulers.id"), primary_key=True),
        sa.Column("user_id", sa.BigInteger, primary_key=True),
    )
    op.create_table(
        "scheduled_shifts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("scheduler_id", sa.BigInteger, sa.ForeignKey("schedulers.id"), nullable=False),
        sa.Column("start_ts", sa.BigInteger, nullable=False),
        sa.Column("end_ts", sa.BigInteger, nullable=False),
        sa.Column("title", sa.String(255), nullable=True),
        sa.Column("job_id", sa.String(128), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("is_published", sa.Boolean, nullable=False),
        sa.Column("is_open_shift", sa.Boolean, nullable=False),
        sa.Column("open_spots", sa.Integer, nullable=True),
        sa.Column("is_require_admin_approval", sa.Boolean, nullable=True),
        sa.Column("color", sa.String(16), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("created_by", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_scheduled_shifts_time", "scheduled_shifts", ["scheduler_id", "start_ts"])
    op.create_table(
        "shift_users",
        sa.Column(
            "shift_id",
            sa.String(32),
            sa.ForeignKey("scheduled_shifts.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("user_id", sa.BigInteger, primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
    )
    op.create_index("ix_shift_users_user", "shift_users", ["user_id"])
    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("occurred_at", sa.BigInteger, nullable=False),
        sa.Column("time_clock_id", sa.BigInteger, nullable=True),
        sa.Column("scheduler_id", sa.BigInteger, nullable=True),
        sa.Column("user_id", sa.BigInteger, nullable=True),
        sa.Column("payload", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("events")
    op.drop_index("ix_shift_users_user", "shift_users")
    op.drop_table("shift_users")
    op.drop_index("ix_scheduled_shifts_time", "scheduled_shifts")
    op.drop_table("scheduled_shifts")
    op.drop_table("scheduler_users")
    op.drop_table("scheduler_jobs")
    op.drop_table("schedulers")
    with op.batch_alter_table("time_clock_jobs") as batch:
        batch.drop_column("color")
