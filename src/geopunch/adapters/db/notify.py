"""PostgreSQL's own change notification between replicas.

A transaction that changes what other servers hold (time clocks and fences,
events, API keys) sends ``NOTIFY geopunch`` before it commits; PostgreSQL
delivers it to every listening connection once the commit is done, and not
at all if it is rolled back. Each server keeps one connection listening and
wakes its index follower and store watcher on every notification, so a
change made through one replica is applied by the others within
milliseconds. The followers' polling stays as the fallback for notifications
missed while the listening connection was down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Connection, Engine, text

log = logging.getLogger("geopunch")

CHANNEL = "geopunch"
#: How long one wait for notifications lasts, so that a stop is seen soon.
WAIT_S = 0.5
#: Pause after the listening connection failed, before connecting again.
RETRY_S = 1.0


def notify(conn: Connection) -> None:
    """Queue the notification in ``conn``'s transaction (sent at its commit)."""
    conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def listen(engine: Engine, on_notify: Callable[[], None], stopped: threading.Event) -> None:
    """Until ``stopped``: call ``on_notify`` for each burst of notifications,
    and once after every (re)connection for what was missed meanwhile."""
    failures = 0
    while not stopped.is_set():
        try:
            raw = engine.raw_connection()
            conn = raw.driver_connection
            raw.detach()  # held for good: not returned to the pool
            try:
                conn.autocommit = True  # type: ignore[union-attr]
                conn.execute(f"LISTEN {CHANNEL}")  # type: ignore[union-attr]
                if failures:
                    log.info("store listener recovered", extra={"fields": {"failures": failures}})
                    failures = 0
                on_notify()
                while not stopped.is_set():
                    if any(True for _ in conn.notifies(timeout=WAIT_S, stop_after=1)):  # type: ignore[union-attr]
                        on_notify()
            finally:
                raw.close()
        except Exception:  # the store may be briefly unavailable; polling covers it
            failures += 1
            if failures == 1:
                log.exception("store listener failed; polling covers it until it is back")
            stopped.wait(RETRY_S)
