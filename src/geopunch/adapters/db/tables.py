"""Table definitions (SQLAlchemy Core). Alembic migrations create them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

time_clocks = Table(
    "time_clocks",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("name", String(255), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("job_enforcement", Boolean, nullable=False),
    Column("manual_breaks_enabled", Boolean, nullable=False),
    Column("geofence_policy", String(32), nullable=False),
    Column("accuracy_tolerance_m", Float, nullable=False),
    Column("exit_high_accuracy_max_m", Float, nullable=False),
    Column("exit_buffer_high_accuracy_m", Float, nullable=False),
    Column("exit_low_accuracy_max_m", Float, nullable=False),
    Column("exit_buffer_low_accuracy_m", Float, nullable=False),
    Column("exit_buffer_unknown_accuracy_m", Float, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

time_clock_jobs = Table(
    "time_clock_jobs",
    metadata,
    Column("time_clock_id", BigInteger, ForeignKey("time_clocks.id"), primary_key=True),
    Column("job_id", String(128), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("name", String(255), nullable=False),
    Column("parent_job_id", String(128), nullable=True),
)

time_clock_users = Table(
    "time_clock_users",
    metadata,
    Column("time_clock_id", BigInteger, ForeignKey("time_clocks.id"), primary_key=True),
    Column("user_id", BigInteger, primary_key=True),
)

manual_break_types = Table(
    "manual_break_types",
    metadata,
    Column("time_clock_id", BigInteger, ForeignKey("time_clocks.id"), primary_key=True),
    Column("break_id", String(128), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("name", String(255), nullable=False),
    Column("is_mandatory", Boolean, nullable=False),
    Column("min_duration_s", Integer, nullable=False),
)

day_statuses = Table(
    "day_statuses",
    metadata,
    Column("time_clock_id", BigInteger, ForeignKey("time_clocks.id"), primary_key=True),
    Column("user_id", BigInteger, primary_key=True),
    Column("day", String(10), primary_key=True),  # ISO date, sorts as text
    Column("status", String(16), nullable=False),
)

geofences = Table(
    "geofences",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("time_clock_id", BigInteger, ForeignKey("time_clocks.id"), nullable=False, index=True),
    Column("position", BigInteger, nullable=False),
    Column("name", String(255), nullable=False),
    Column("is_enabled", Boolean, nullable=False),
    Column("fence_size_m", Integer, nullable=False),
    Column("exit_action", String(32), nullable=False),
    Column("address", String(1000), nullable=False),
    Column("latitude", Float, nullable=False),
    Column("longitude", Float, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

geofence_jobs = Table(
    "geofence_jobs",
    metadata,
    Column(
        "fence_id", String(64), ForeignKey("geofences.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("job_id", String(128), primary_key=True),
    Column("time_clock_id", BigInteger, nullable=False),
    Column("position", Integer, nullable=False),
    ForeignKeyConstraint(
        ["time_clock_id", "job_id"], ["time_clock_jobs.time_clock_id", "time_clock_jobs.job_id"]
    ),
)
