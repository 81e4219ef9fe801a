"""Accounts: every resource belongs to one, and API keys live in the store.

Time clock and scheduler ids become unique per account, so ``account_id``
joins every key that reaches them. Tables whose primary key changes are
rebuilt (copied aside, recreated, copied back) the same way on SQLite and
PostgreSQL; existing rows move into the default account, id 1. SQLite runs
this with foreign keys off (see ``store.migrate``).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: Rebuilt tables, parents before children.
REBUILT = (
    "time_clocks",
    "time_clock_jobs",
    "time_clock_users",
    "manual_break_types",
    "day_statuses",
    "geofences",
    "geofence_jobs",
    "activities",
    "idempotency_keys",
    "schedulers",
    "scheduler_jobs",
    "scheduler_users",
    "scheduled_shifts",
    "shift_users",
    "live_trails",
)
DEFAULT_ACCOUNT = 1


def _schema() -> MetaData:
    """The schema of this revision (a copy: later revisions may change the live one)."""
    metadata = MetaData()

    #: Every resource belongs to one account; ids that callers choose (time clock
    #: and scheduler ids) are unique per account only, so ``account_id`` leads
    #: every key and every foreign key that reaches them.
    Table(
        "accounts",
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("name", String(64), nullable=False, unique=True),
        Column("created_at", BigInteger, nullable=False),
    )

    #: API keys: the secret is shown once; only a salted SHA-256 of it is kept.
    Table(
        "api_keys",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("account_id", BigInteger, ForeignKey("accounts.id"), nullable=False, index=True),
        Column("label", String(255), nullable=False),
        Column("scopes", String(64), nullable=False),  # comma-separated, sorted
        Column("salt", LargeBinary(16), nullable=False),
        Column("digest", LargeBinary(32), nullable=False),
        Column("created_at", BigInteger, nullable=False),
        Column("revoked_at", BigInteger, nullable=True),
    )

    def _account() -> Column[int]:
        return Column("account_id", BigInteger, ForeignKey("accounts.id"), primary_key=True)

    def _clock_child(*columns: Column[object]) -> list[Column[object] | ForeignKeyConstraint]:
        """Columns of a table hanging off a time clock, keyed by (account, clock, ...)."""
        return [
            Column("account_id", BigInteger, primary_key=True),
            Column("time_clock_id", BigInteger, primary_key=True),
            *columns,
            ForeignKeyConstraint(
                ["account_id", "time_clock_id"], ["time_clocks.account_id", "time_clocks.id"]
            ),
        ]

    Table(
        "time_clocks",
        metadata,
        _account(),
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

    Table(
        "time_clock_jobs",
        metadata,
        *_clock_child(
            Column("job_id", String(128), primary_key=True),
            Column("position", Integer, nullable=False),
            Column("name", String(255), nullable=False),
            Column("parent_job_id", String(128), nullable=True),
            Column("color", String(16), nullable=True),
        ),
    )

    Table(
        "time_clock_users",
        metadata,
        *_clock_child(Column("user_id", BigInteger, primary_key=True)),
    )

    Table(
        "manual_break_types",
        metadata,
        *_clock_child(
            Column("break_id", String(128), primary_key=True),
            Column("position", Integer, nullable=False),
            Column("name", String(255), nullable=False),
            Column("is_mandatory", Boolean, nullable=False),
            Column("min_duration_s", Integer, nullable=False),
        ),
    )

    Table(
        "day_statuses",
        metadata,
        *_clock_child(
            Column("user_id", BigInteger, primary_key=True),
            Column("day", String(10), primary_key=True),  # ISO date, sorts as text
            Column("status", String(16), nullable=False),
        ),
    )

    geofences = Table(
        "geofences",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("account_id", BigInteger, nullable=False),
        Column("time_clock_id", BigInteger, nullable=False),
        Column("position", BigInteger, nullable=False),
        Column("name", String(255), nullable=False),
        Column("is_enabled", Boolean, nullable=False),
        Column("fence_size_m", Integer, nullable=False),
        Column("exit_action", String(32), nullable=False),
        Column("address", String(1000), nullable=False),
        Column("latitude", Float, nullable=False),
        Column("longitude", Float, nullable=False),
        Column("created_at", BigInteger, nullable=False),
        ForeignKeyConstraint(
            ["account_id", "time_clock_id"], ["time_clocks.account_id", "time_clocks.id"]
        ),
    )
    Index("ix_geofences_clock", geofences.c.account_id, geofences.c.time_clock_id)

    Table(
        "geofence_jobs",
        metadata,
        Column(
            "fence_id", String(64), ForeignKey("geofences.id", ondelete="CASCADE"), primary_key=True
        ),
        Column("job_id", String(128), primary_key=True),
        Column("account_id", BigInteger, nullable=False),
        Column("time_clock_id", BigInteger, nullable=False),
        Column("position", Integer, nullable=False),
        ForeignKeyConstraint(
            ["account_id", "time_clock_id", "job_id"],
            [
                "time_clock_jobs.account_id",
                "time_clock_jobs.time_clock_id",
                "time_clock_jobs.job_id",
            ],
        ),
    )

    def _punch_columns(prefix: str, required: bool) -> list[Column[object]]:
        nullable = not required
        return [
            Column(f"{prefix}_ts", BigInteger, nullable=nullable),
            Column(f"{prefix}_tz", String(64), nullable=nullable),
            Column(f"{prefix}_address", String(1000), nullable=True),
            Column(f"{prefix}_lat", Float, nullable=True),
            Column(f"{prefix}_lon", Float, nullable=True),
            Column(f"{prefix}_accuracy", Float, nullable=True),
            Column(f"{prefix}_source", String(32), nullable=nullable),
            Column(f"{prefix}_geofence_id", String(64), nullable=True),
        ]

    activities = Table(
        "activities",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("account_id", BigInteger, nullable=False),
        Column("time_clock_id", BigInteger, nullable=False),
        Column("user_id", BigInteger, nullable=False),
        Column("kind", String(8), nullable=False),
        Column("job_id", String(128), nullable=True),
        Column("break_type_id", String(128), nullable=True),
        Column("scheduler_shift_id", String(128), nullable=True),
        Column("from_shift_id", String(64), nullable=True),
        *_punch_columns("start", required=True),
        *_punch_columns("end", required=False),
        Column("created_at", BigInteger, nullable=False),
        Column("modified_at", BigInteger, nullable=False),
        ForeignKeyConstraint(
            ["account_id", "time_clock_id"], ["time_clocks.account_id", "time_clocks.id"]
        ),
    )
    # The database itself guarantees one open activity per (time clock, user).
    Index(
        "ux_activities_one_open",
        activities.c.account_id,
        activities.c.time_clock_id,
        activities.c.user_id,
        unique=True,
        sqlite_where=activities.c.end_ts.is_(None),
        postgresql_where=activities.c.end_ts.is_(None),
    )
    Index(
        "ix_activities_user",
        activities.c.account_id,
        activities.c.time_clock_id,
        activities.c.user_id,
        activities.c.end_ts,
    )

    idempotency_keys = Table(
        "idempotency_keys",
        metadata,
        Column("account_id", BigInteger, primary_key=True),
        Column("key", String(128), primary_key=True),
        Column("method", String(64), nullable=False),
        Column("body_hash", String(64), nullable=False),
        Column("response", LargeBinary, nullable=False),
        Column("created_at", BigInteger, nullable=False),
    )
    Index("ix_idempotency_keys_created_at", idempotency_keys.c.created_at)

    Table(
        "schedulers",
        metadata,
        _account(),
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("name", String(255), nullable=False),
        Column("timezone", String(64), nullable=False),
        Column("multi_user_shifts", Boolean, nullable=False),
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger, nullable=False),
    )

    Table(
        "scheduler_jobs",
        metadata,
        Column("account_id", BigInteger, primary_key=True),
        Column("scheduler_id", BigInteger, primary_key=True),
        Column("job_id", String(128), primary_key=True),
        Column("position", Integer, nullable=False),
        Column("name", String(255), nullable=False),
        Column("parent_job_id", String(128), nullable=True),
        Column("color", String(16), nullable=True),
        ForeignKeyConstraint(
            ["account_id", "scheduler_id"], ["schedulers.account_id", "schedulers.id"]
        ),
    )

    Table(
        "scheduler_users",
        metadata,
        Column("account_id", BigInteger, primary_key=True),
        Column("scheduler_id", BigInteger, primary_key=True),
        Column("user_id", BigInteger, primary_key=True),
        ForeignKeyConstraint(
            ["account_id", "scheduler_id"], ["schedulers.account_id", "schedulers.id"]
        ),
    )

    scheduled_shifts = Table(
        "scheduled_shifts",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("account_id", BigInteger, nullable=False),
        Column("scheduler_id", BigInteger, nullable=False),
        Column("start_ts", BigInteger, nullable=False),
        Column("end_ts", BigInteger, nullable=False),
        Column("title", String(255), nullable=True),
        Column("job_id", String(128), nullable=True),
        Column("timezone", String(64), nullable=False),
        Column("is_published", Boolean, nullable=False),
        Column("is_open_shift", Boolean, nullable=False),
        Column("open_spots", Integer, nullable=True),
        Column("is_require_admin_approval", Boolean, nullable=True),
        Column("color", String(16), nullable=False),
        # location, notes, breaks, statuses, shift details and custom fields
        Column("body", JSON, nullable=False),
        Column("created_by", BigInteger, nullable=True),
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger, nullable=False),
        ForeignKeyConstraint(
            ["account_id", "scheduler_id"], ["schedulers.account_id", "schedulers.id"]
        ),
    )
    Index(
        "ix_scheduled_shifts_time",
        scheduled_shifts.c.account_id,
        scheduled_shifts.c.scheduler_id,
        scheduled_shifts.c.start_ts,
    )

    shift_users = Table(
        "shift_users",
        metadata,
        Column(
            "shift_id",
            String(32),
            ForeignKey("scheduled_shifts.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        Column("user_id", BigInteger, primary_key=True),
        Column("position", Integer, nullable=False),
    )
    Index("ix_shift_users_user", shift_users.c.user_id)

    # Live positions: per trail (user, time clock), the last accepted sample's time
    # and the fences the trail is inside.
    Table(
        "live_trails",
        metadata,
        Column("account_id", BigInteger, primary_key=True),
        Column("user_id", BigInteger, primary_key=True),
        Column("time_clock_id", BigInteger, primary_key=True),
        Column("last_ts", BigInteger, nullable=False),
        Column("inside", JSON, nullable=False),  # list of fence ids
    )
    return metadata


def upgrade() -> None:
    conn = op.get_bind()
    for name in REBUILT:
        op.execute(f"CREATE TABLE {name}__v6 AS SELECT * FROM {name}")
    for name in reversed(REBUILT):
        op.drop_table(name)
    schema = _schema()
    schema.create_all(conn)
    now = int(time.time())
    op.execute(
        sa.text(
            "INSERT INTO accounts (id, name, created_at) VALUES (:id, 'default', :now)"
        ).bindparams(id=DEFAULT_ACCOUNT, now=now)
    )
    for name in REBUILT:
        old = [c["name"] for c in sa.inspect(conn).get_columns(f"{name}__v6")]
        cols = ", ".join(old)
        if "account_id" in schema.tables[name].c:
            op.execute(
                f"INSERT INTO {name} (account_id, {cols}) "
                f"SELECT {DEFAULT_ACCOUNT}, {cols} FROM {name}__v6"
            )
        else:  # rebuilt only because its parent was
            op.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {name}__v6")
        op.drop_table(f"{name}__v6")
    for name in ("events", "index_changes"):
        op.add_column(
            name,
            Column("account_id", BigInteger, nullable=False, server_default=str(DEFAULT_ACCOUNT)),
        )
    op.create_index("ix_events_account", "events", ["account_id", "seq"])


#: Why there is no way back (geopunch migrate refuses to cross this revision
#: before running any downgrade).
IRREVERSIBLE = "accounts cannot be folded back into one namespace"


def downgrade() -> None:
    raise NotImplementedError(IRREVERSIBLE)
