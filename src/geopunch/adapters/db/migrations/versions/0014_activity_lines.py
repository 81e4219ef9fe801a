"""Each activity's line of a listed gRPC page, kept encoded beside its
columns (geopunch.adapters.activity_messages), and written here for the rows
already stored. On SQLite the index by start becomes one that holds the lines
too (see tables.py).

Stop the servers of the release before first: the table stays locked while
its rows are encoded, and a server that does not know the line would change
a row without it (docs/operations.md, Upgrading).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from geopunch.adapters.activity_messages import encode_line
from geopunch.domain.punches import ActivityRow

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_BY_START = ["account_id", "time_clock_id", "start_ts", "id"]
#: Rows encoded a statement: a store of a million activities migrates in
#: a couple of hundred round trips.
_BATCH = 5000


def upgrade() -> None:
    op.add_column("activities", sa.Column("encoded", sa.LargeBinary, nullable=True))
    _encode_stored(op.get_bind())
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index("ix_activities_start", "activities")
        op.create_index("ix_activities_lines", "activities", [*_BY_START, "end_ts", "encoded"])


def _encode_stored(conn: sa.Connection) -> None:
    """Every stored activity's line, in batches by id. (Rows the store finds
    without one are encoded when listed, so a line left out here would only
    cost time.)"""
    table = sa.table("activities", *(sa.column(name) for name in ("encoded", *ActivityRow._fields)))
    fields = [table.c[name] for name in ActivityRow._fields]
    write = (
        sa.update(table)
        .where(table.c.id == sa.bindparam("activity_id"))
        .values(encoded=sa.bindparam("line", type_=sa.LargeBinary))
    )
    after = ""
    while True:
        rows = conn.execute(
            sa.select(*fields).where(table.c.id > after).order_by(table.c.id).limit(_BATCH)
        ).all()
        if not rows:
            return
        made = [ActivityRow._make(r) for r in rows]
        conn.execute(write, [{"activity_id": r.id, "line": encode_line(r)} for r in made])
        after = made[-1].id


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index("ix_activities_lines", "activities")
        op.create_index("ix_activities_start", "activities", _BY_START)
    with op.batch_alter_table("activities") as batch:
        batch.drop_column("encoded")
