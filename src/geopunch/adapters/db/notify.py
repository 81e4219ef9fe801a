"""PostgreSQL's own change notification between replicas.

A transaction that changes what other servers hold (time clocks and fences,
events, API keys) sends a notification on its schema's channel before it
commits; PostgreSQL delivers it to every listening connection once the
commit is done, and not at all if it is rolled back. Each server keeps one
connection listening and wakes its index follower and store watcher on every
notification, so a change made through one replica is applied by the others
within milliseconds. The followers' polling stays as the fallback for
notifications missed while the listening connection was down.

A notification names what changed (events, the index's feed, API keys) and
the process that sent it. A process applies its own events and index
changes as it commits them, so its listener drops those of its own
notifications: on a busy replica every group commit notified, and each of
its own notifications cost the replica three more transactions (the index
feed, the newest event, the keys' fingerprint), a third of its interpreter's
time under punches on PostgreSQL (bench/README.md).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, text

from geopunch.adapters.db.faults import as_unavailable
from geopunch.adapters.db.prepared import driver
from geopunch.logs import FailureLog

log = logging.getLogger("geopunch")

#: The channel, named in SQL: one per schema, so that deployments sharing a
#: database in schemas of their own do not wake each other. A digest keeps it
#: within PostgreSQL's 63-byte identifiers whatever the schema's name.
_CHANNEL_SQL = "'geopunch_' || left(md5(coalesce(current_schema(), '')), 16)"
#: What a notification says changed.
EVENTS, INDEX, KEYS = "e", "i", "k"
EVERYTHING = EVENTS + INDEX + KEYS
#: How long one wait for notifications lasts, so that a stop is seen soon.
WAIT_S = 0.5
#: Pause after the listening connection failed, before connecting again.
RETRY_S = 1.0
#: How long start-up waits for its own probe notification (notifications_arrive):
#: on a store that delivers them at all, a few milliseconds.
PROBE_S = 5.0


_sender: tuple[int, str] = (0, "")


def sender() -> str:
    """This process's name in its notifications (a forked worker gets its own)."""
    global _sender
    pid = os.getpid()
    if _sender[0] != pid:
        _sender = (pid, uuid.uuid4().hex)
    return _sender[1]


def notify(conn: Connection, kinds: str) -> None:
    """Queue the notification that ``kinds`` changed in ``conn``'s
    transaction (sent at its commit)."""
    payload = f"{sender()}:{kinds}"
    # On the driver: inside a pipeline (see ``prepared.together``) it waits for nothing.
    driver(conn).execute(f"SELECT pg_notify({_CHANNEL_SQL}, %s)", (payload,))


def channel(conn: Connection) -> str:
    """The channel that ``conn``'s schema notifies on."""
    return str(conn.execute(text(f"SELECT {_CHANNEL_SQL}")).scalar_one())


def news(payload: str) -> str:
    """What a notification tells this process: the kinds it names, but for
    the events and index changes this process sent (applied as committed;
    API keys are not). Anything unreadable counts as every kind."""
    source, _, kinds = payload.partition(":")
    if not kinds or kinds.strip(EVERYTHING):
        return EVERYTHING
    return kinds.replace(EVENTS, "").replace(INDEX, "") if source == sender() else kinds


@contextmanager
def _outside_the_pool(engine: Engine) -> Iterator[Any]:
    """A driver connection of ``engine``'s in autocommit, kept out of its
    pool (a ``LISTEN`` lasts as long as its session) and closed at the end."""
    raw = engine.raw_connection()
    conn: Any = raw.driver_connection
    raw.detach()
    try:
        conn.autocommit = True
        yield conn
    finally:
        raw.close()


def notifications_arrive(engine: Engine, within_s: float = PROBE_S) -> bool:
    """Whether a notification sent on one of ``engine``'s connections reaches
    another that listens, within ``within_s``.

    Not when a pooler hands each transaction whichever server connection is
    free (PgBouncer's ``pool_mode = transaction`` or ``statement``): the
    ``LISTEN`` stays on a server connection that the listening client no
    longer holds. Such a pooler also breaks what else needs a session of its
    own (the driver's prepared statements, the timeouts set once a
    connection), so the server refuses to start on it (bootstrap). The
    channel is this probe's own: no replica wakes for it."""
    probe = f"geopunch_probe_{uuid.uuid4().hex}"
    with _outside_the_pool(engine) as listening:
        listening.execute(f'LISTEN "{probe}"')
        with engine.connect() as conn:
            conn.exec_driver_sql(f'NOTIFY "{probe}"')
            conn.commit()
        return any(True for _ in listening.notifies(timeout=within_s, stop_after=1))


def listen(engine: Engine, on_notify: Callable[[str], None], stopped: threading.Event) -> None:
    """Until ``stopped``: call ``on_notify`` with what changed for each
    notification that tells this process something, and with every kind
    after each (re)connection, for what was missed meanwhile."""
    # Polling covers what it would hear while it is away.
    failures = FailureLog("store listener", log)
    while not stopped.is_set():
        try:
            with _outside_the_pool(engine) as conn:
                (name,) = conn.execute(f"SELECT {_CHANNEL_SQL}").fetchone()
                conn.execute(f'LISTEN "{name}"')
                failures.succeeded()
                on_notify(EVERYTHING)
                while not stopped.is_set():
                    for note in conn.notifies(timeout=WAIT_S, stop_after=1):
                        if kinds := news(note.payload):
                            on_notify(kinds)
        except Exception as exc:  # the store may be briefly unavailable
            failures.failed(as_unavailable(exc) or exc)
            stopped.wait(RETRY_S)
