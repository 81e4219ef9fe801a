"""Table definitions (SQLAlchemy Core). Alembic migrations create them."""

from __future__ import annotations

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
    Text,
    false,
)

metadata = MetaData()

#: Every resource belongs to one account; ids that callers choose (time clock
#: and scheduler ids) are unique per account only, so ``account_id`` leads
#: every key and every foreign key that reaches them.
accounts = Table(
    "accounts",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("name", String(64), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
)

#: API keys: the secret is shown once; only a salted SHA-256 of it is kept.
api_keys = Table(
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


time_clocks = Table(
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

time_clock_jobs = Table(
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

time_clock_users = Table(
    "time_clock_users",
    metadata,
    *_clock_child(Column("user_id", BigInteger, primary_key=True)),
)

manual_break_types = Table(
    "manual_break_types",
    metadata,
    *_clock_child(
        Column("break_id", String(128), primary_key=True),
        Column("position", Integer, nullable=False),
        Column("name", String(255), nullable=False),
        Column("is_mandatory", Boolean, nullable=False),
        Column("min_duration_s", Integer, nullable=False),
        Column("is_paid", Boolean, nullable=False, server_default=false()),
    ),
)

day_statuses = Table(
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
# With the position: a new fence's position (the clock's largest plus one) is
# one probe of this index.
Index(
    "ix_geofences_clock",
    geofences.c.account_id,
    geofences.c.time_clock_id,
    geofences.c.position,
)

geofence_jobs = Table(
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
    Column("notes", String(2000), nullable=True),
    # Derived from the columns above, written with them: the activity's line
    # of a listed gRPC page (geopunch.adapters.activity_messages). Revision
    # 0014 wrote it for the rows stored before. NULL in a row written by hand
    # and where the line is longer than LONGEST_KEPT_LINE; a listed page
    # encodes those from their columns.
    Column("encoded", LargeBinary, nullable=True),
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
#: Indexes made on one dialect only, by name, and that dialect.
ONE_DIALECT_INDEXES: dict[str, str] = {}


def _only_on(dialect: str, index: Index) -> None:
    assert index.name is not None
    ONE_DIALECT_INDEXES[str(index.name)] = dialect
    index.ddl_if(dialect=dialect)


#: The longest line the store keeps. Both indexes by start hold the lines,
#: and PostgreSQL's index entries cannot pass about 2,700 bytes; an activity
#: with long notes and addresses can, so its line is not kept.
LONGEST_KEPT_LINE = 2000

# Each index by start also holds each row's end and line, so that a listed
# page is read from the index alone: looking each row up in the table took
# most of a 10,000-row page's read on both stores (bench/README.md,
# ListTimeActivities). On PostgreSQL as payload (INCLUDE), read from the index
# alone where vacuum has marked the table's pages all-visible, as autovacuum
# does after a load or once enough rows have changed. SQLite's also holds
# the user, kind and break type, the rest of what a window's totals read:
# 600,000 activities' spans read in 0.81-0.91 s against 1.12-1.13 s. On
# PostgreSQL the same columns in INCLUDE measured no faster (its rows come
# from the table in start order); they would only cost its writes.
_only_on(
    "postgresql",
    Index(
        "ix_activities_start",
        activities.c.account_id,
        activities.c.time_clock_id,
        activities.c.start_ts,
        activities.c.id,
        postgresql_include=["end_ts", "encoded"],
    ),
)
_only_on(
    "sqlite",
    Index(
        "ix_activities_lines",
        activities.c.account_id,
        activities.c.time_clock_id,
        activities.c.start_ts,
        activities.c.id,
        activities.c.end_ts,
        activities.c.encoded,
        activities.c.user_id,
        activities.c.kind,
        activities.c.break_type_id,
    ),
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


schedulers = Table(
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

scheduler_jobs = Table(
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

scheduler_users = Table(
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

# The append-only event log (outbox): written in the transaction of the change
# that caused the event; ``seq`` orders it and is a subscriber's cursor.
events = Table(
    "events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("account_id", BigInteger, nullable=False),
    Column("type", String(32), nullable=False),
    Column("occurred_at", BigInteger, nullable=False),
    Column("time_clock_id", BigInteger, nullable=True),
    Column("scheduler_id", BigInteger, nullable=True),
    Column("user_id", BigInteger, nullable=True),
    Column("payload", JSON, nullable=False),
    #: When it was appended (retention counts from here).
    Column("recorded_at", BigInteger, nullable=True),
    #: ``evt_`` and a UUID's hex: unique beyond this store (webhook-id, Nats-Msg-Id).
    Column("event_id", String(40), nullable=True),
)
Index("ix_events_account", events.c.account_id, events.c.seq)

#: One row: the log holds no event at or below ``purged_through`` any more.
event_horizon = Table(
    "event_horizon",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("purged_through", BigInteger, nullable=False),
)

# Live positions: per trail (user, time clock), the last accepted sample's time
# and the fences the trail is inside.
live_trails = Table(
    "live_trails",
    metadata,
    Column("account_id", BigInteger, primary_key=True),
    Column("user_id", BigInteger, primary_key=True),
    Column("time_clock_id", BigInteger, primary_key=True),
    Column("last_ts", BigInteger, nullable=False),
    Column("inside", JSON, nullable=False),  # list of fence ids
)


# Which time clocks changed (settings or geofences), in commit order: every
# server process on the store follows it to keep its fence index current, so
# that replicas sharing one PostgreSQL see each other's changes. AUTOINCREMENT
# on SQLite: a pruned table must not hand out a seq a follower already passed.
index_changes = Table(
    "index_changes",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("account_id", BigInteger, nullable=False),
    Column("time_clock_id", BigInteger, nullable=False),
    Column("changed_at", BigInteger, nullable=False),
    sqlite_autoincrement=True,
)

# One row: the feed's random identity (made with the store) and the newest
# seq pruned from it. A fence index saved at some seq (a checkpoint file) is
# complete with the feed's later changes only if it belongs to this feed and
# nothing past that seq was pruned.
index_feed = Table(
    "index_feed",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("pruned_through", BigInteger, nullable=False),
)


# Webhook subscriptions, each with its own cursor into the event log and the
# state of the event at its head (attempts, when to try again). One process
# delivers a subscription at a time: the one holding its lease.
webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", BigInteger, nullable=False),
    Column("url", Text, nullable=False),
    Column("event_types", JSON, nullable=False),
    Column("time_clock_ids", JSON, nullable=False),
    Column("secret", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    #: Delivered through this seq.
    Column("cursor", BigInteger, nullable=False),
    #: Failed attempts of the event after the cursor, since ``failing_since`` (ms).
    Column("attempts", Integer, nullable=False),
    Column("failing_since", BigInteger, nullable=True),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("modified_at", BigInteger, nullable=False),
)
Index("ix_webhook_subscriptions_account", webhook_subscriptions.c.account_id)

#: The deliverers alive now (one a server process), each until its last
#: claim's lease runs out: subscriptions are shared evenly among them.
webhook_deliverers = Table(
    "webhook_deliverers",
    metadata,
    Column("owner", String(64), primary_key=True),
    Column("alive_until", BigInteger, nullable=False),
)

#: Delivery attempts, kept for a configurable time.
webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("subscription_id", String(40), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("event_id", String(40), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("attempted_at", BigInteger, nullable=False),  # ms
    Column("status_code", Integer, nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("error", Text, nullable=True),
    Column("succeeded", Boolean, nullable=False),
)
Index("ix_webhook_attempts_subscription", webhook_attempts.c.subscription_id, webhook_attempts.c.id)
Index("ix_webhook_attempts_time", webhook_attempts.c.attempted_at)

#: Sinks other than webhooks (the JetStream publisher): a cursor and a lease each.
event_sinks = Table(
    "event_sinks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("cursor", BigInteger, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", BigInteger, nullable=False),
)
