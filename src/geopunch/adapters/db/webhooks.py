"""Webhook subscriptions and their delivery attempts in the store.

The CRUD methods see one account's subscriptions. The deliverer's methods
(``fair_share``, ``claim``, ``save_progress``, ``record_attempts``) work
across accounts and only on rows whose lease the caller holds, so that no two
processes or replicas deliver one subscription at once; ``fair_share`` counts
the live deliverers so that they share the subscriptions evenly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, or_, select, update

from geopunch.adapters.db.prepared import Prepared
from geopunch.adapters.db.repositories import AccountScoped
from geopunch.adapters.db.tables import (
    event_sinks,
    webhook_attempts,
    webhook_deliverers,
    webhook_subscriptions,
)
from geopunch.domain.webhooks import Attempt, Subscription, SubscriptionStatus

_S = webhook_subscriptions
_A = webhook_attempts
_D = webhook_deliverers
_ACTIVE = SubscriptionStatus.ACTIVE.value
_ATTEMPT_FIELDS = tuple(c.key for c in _A.c if c.key != "id")
_INSERT_ATTEMPT = Prepared(insert(_A).values({k: bindparam(k) for k in _ATTEMPT_FIELDS}))


def _subscription(r: Any) -> Subscription:
    return Subscription(
        id=r.id,
        account_id=r.account_id,
        url=r.url,
        event_types=tuple(r.event_types),
        time_clock_ids=tuple(r.time_clock_ids),
        secret=r.secret,
        status=SubscriptionStatus(r.status),
        cursor=r.cursor,
        attempts=r.attempts,
        failing_since=r.failing_since,
        next_attempt_at=r.next_attempt_at,
        created_at=r.created_at,
        modified_at=r.modified_at,
    )


def _row(s: Subscription) -> dict[str, Any]:
    return {
        "id": s.id,
        "account_id": s.account_id,
        "url": s.url,
        "event_types": list(s.event_types),
        "time_clock_ids": list(s.time_clock_ids),
        "secret": s.secret,
        "status": s.status.value,
        "cursor": s.cursor,
        "attempts": s.attempts,
        "failing_since": s.failing_since,
        "next_attempt_at": s.next_attempt_at,
        "created_at": s.created_at,
        "modified_at": s.modified_at,
    }


class SqlWebhookRepository(AccountScoped):
    def __init__(self, conn: Connection, account: int | None) -> None:
        super().__init__(conn, account)
        #: Set by a change through the API (add, replace, remove); the unit
        #: of work tells its listener after the commit.
        self.changed = False

    # -- one account's subscriptions -------------------------------------------------

    def count(self) -> int:
        query = select(func.count()).select_from(_S).where(_S.c.account_id == self.account)
        return int(self._conn.execute(query).scalar_one())

    def add(self, sub: Subscription) -> None:
        assert sub.account_id == self.account
        self.changed = True
        self._conn.execute(insert(_S).values({**_row(sub), "lease_owner": None, "lease_until": 0}))

    def get(self, sub_id: str, *, for_update: bool = False) -> Subscription | None:
        query = select(_S).where(_S.c.account_id == self.account, _S.c.id == sub_id)
        if for_update and self._conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = self._conn.execute(query).first()
        return None if row is None else _subscription(row)

    def all(self) -> list[Subscription]:
        query = select(_S).where(_S.c.account_id == self.account).order_by(_S.c.created_at, _S.c.id)
        return [_subscription(r) for r in self._conn.execute(query)]

    def replace(self, sub: Subscription) -> None:
        """Store a changed subscription. Its lease stays with its holder,
        which sees ``modified_at`` move and reloads it."""
        self.changed = True
        values = _row(sub)
        del values["id"], values["account_id"]
        self._conn.execute(
            update(_S).where(_S.c.account_id == self.account, _S.c.id == sub.id).values(values)
        )

    def remove(self, sub_id: str) -> bool:
        self.changed = True
        gone = self._conn.execute(
            delete(_S).where(_S.c.account_id == self.account, _S.c.id == sub_id)
        ).rowcount
        self._conn.execute(delete(_A).where(_A.c.subscription_id == sub_id))
        return bool(gone)

    def attempts(self, sub_id: str, limit: int, before_id: int = 0) -> list[Attempt]:
        """Newest first; ``before_id`` continues a listing (0: from the newest)."""
        query = select(_A).where(_A.c.subscription_id == sub_id)
        if before_id:
            query = query.where(_A.c.id < before_id)
        rows = self._conn.execute(query.order_by(_A.c.id.desc()).limit(limit))
        return [
            Attempt(
                subscription_id=r.subscription_id,
                seq=r.seq,
                event_id=r.event_id,
                event_type=r.event_type,
                attempt=r.attempt,
                attempted_at=r.attempted_at,
                status_code=r.status_code,
                latency_ms=r.latency_ms,
                error=r.error,
                succeeded=r.succeeded,
                id=r.id,
            )
            for r in rows
        ]

    # -- the deliverer's, across accounts --------------------------------------------

    def fair_share(self, owner: str, now_ms: int, lease_ms: int) -> int:
        """Record ``owner`` as a live deliverer for ``lease_ms``, forget the
        ones whose time ran out, and answer how many active subscriptions
        ``owner`` should hold: all of them shared evenly, the remainder one
        each to the live deliverers holding the most now, then by name (10
        among 3 holding none: 4, 3, 3), so that every one is held and the
        shares never disagree. Holdings first: while they differ by at
        most one, as after a subscription went, nothing moves."""
        alive = {"alive_until": now_ms + lease_ms}
        if not self._conn.execute(update(_D).where(_D.c.owner == owner).values(alive)).rowcount:
            self._conn.execute(insert(_D).values(owner=owner, **alive))
        self._conn.execute(delete(_D).where(_D.c.alive_until < now_ms))
        live = list(self._conn.execute(select(_D.c.owner)).scalars())
        active = _S.c.status == _ACTIVE
        holdings = self._conn.execute(
            select(_S.c.lease_owner, func.count())
            .where(active, _S.c.lease_until >= now_ms)
            .group_by(_S.c.lease_owner)
        )
        held: dict[str, int] = {o: int(n) for o, n in holdings}
        count = self._conn.execute(select(func.count()).select_from(_S).where(active)).scalar_one()
        each, rest = divmod(int(count), len(live))
        live.sort(key=lambda o: (-held.get(o, 0), o))
        return each + (live.index(owner) < rest)

    def claim(self, owner: str, now_ms: int, lease_ms: int, limit: int) -> list[Subscription]:
        """Renew every lease ``owner`` holds on an active subscription, then
        take free ones (never held, released, or run out) until it holds
        ``limit``; every active one it now holds."""
        until = now_ms + lease_ms
        mine = (_S.c.lease_owner == owner) & (_S.c.status == _ACTIVE)
        kept = self._conn.execute(update(_S).where(mine).values(lease_until=until)).rowcount
        if kept < limit:
            free = (_S.c.status == _ACTIVE) & or_(
                _S.c.lease_owner.is_(None), _S.c.lease_until < now_ms
            )
            ids = list(
                self._conn.execute(
                    select(_S.c.id).where(free).order_by(_S.c.id).limit(limit - kept)
                ).scalars()
            )
            if ids:
                # ``free`` again: another deliverer may have taken some since.
                self._conn.execute(
                    update(_S)
                    .where(_S.c.id.in_(ids), free)
                    .values(lease_owner=owner, lease_until=until)
                )
        held = self._conn.execute(select(_S).where(mine).order_by(_S.c.id))
        return [_subscription(r) for r in held]

    def release(self, owner: str, sub_ids: Sequence[str] | None = None) -> None:
        """Give back ``owner``'s leases on ``sub_ids``; with None, all of
        them, and ``owner`` is no longer counted as a live deliverer."""
        query = update(_S).where(_S.c.lease_owner == owner)
        if sub_ids is not None:
            if not sub_ids:
                return
            query = query.where(_S.c.id.in_(sub_ids))
        else:
            self._conn.execute(delete(_D).where(_D.c.owner == owner))
        self._conn.execute(query.values(lease_owner=None, lease_until=0))

    def save_progress(self, sub: Subscription, owner: str, seen_modified_at: int) -> bool:
        """Store the deliverer's cursor and retry state of ``sub``, only while
        ``owner`` holds its lease and nobody changed it since
        ``seen_modified_at``; whether it was stored."""
        done = self._conn.execute(
            update(_S)
            .where(
                _S.c.id == sub.id,
                _S.c.lease_owner == owner,
                _S.c.modified_at == seen_modified_at,
            )
            .values(
                cursor=sub.cursor,
                attempts=sub.attempts,
                failing_since=sub.failing_since,
                next_attempt_at=sub.next_attempt_at,
                status=sub.status.value,
            )
        ).rowcount
        return bool(done)

    def record_attempts(self, done: Sequence[Attempt]) -> None:
        if done:
            # Column by column on the driver (see prepared.py): every delivery
            # stores an attempt, and SQLAlchemy's executemany of a dict a row
            # cost about twice the insert itself (bench/README.md).
            _INSERT_ATTEMPT.many_columns(
                self._conn,
                {name: [getattr(a, name) for a in done] for name in _ATTEMPT_FIELDS},
            )

    def purge_attempts(self, before_ms: int, limit: int) -> int:
        oldest = select(_A.c.id).where(_A.c.attempted_at < before_ms).order_by(_A.c.id).limit(limit)
        ids = list(self._conn.execute(oldest).scalars())
        if ids:
            self._conn.execute(delete(_A).where(_A.c.id.in_(ids)))
        return len(ids)

    # -- other sinks (JetStream): a cursor and a lease each ---------------------------

    def claim_sink(
        self, name: str, owner: str, now_ms: int, lease_ms: int, start: int
    ) -> int | None:
        """Take or keep the lease of sink ``name`` (made at cursor ``start``
        when new); its cursor, or None while another holds it."""
        t = event_sinks
        if self._conn.execute(select(t.c.name).where(t.c.name == name)).first() is None:
            try:
                with self._conn.begin_nested():
                    self._conn.execute(
                        insert(t).values(name=name, cursor=start, lease_owner=None, lease_until=0)
                    )
            except Exception:  # another process made it meanwhile
                pass
        taken = self._conn.execute(
            update(t)
            .where(
                t.c.name == name,
                or_(t.c.lease_owner.is_(None), t.c.lease_until < now_ms, t.c.lease_owner == owner),
            )
            .values(lease_owner=owner, lease_until=now_ms + lease_ms)
        ).rowcount
        if not taken:
            return None
        return int(self._conn.execute(select(t.c.cursor).where(t.c.name == name)).scalar_one())

    def save_sink(self, name: str, owner: str, cursor: int) -> bool:
        """Store a sink's cursor while ``owner`` holds its lease; whether it did."""
        t = event_sinks
        return bool(
            self._conn.execute(
                update(t).where(t.c.name == name, t.c.lease_owner == owner).values(cursor=cursor)
            ).rowcount
        )

    def release_sink(self, name: str, owner: str) -> None:
        t = event_sinks
        self._conn.execute(
            update(t)
            .where(t.c.name == name, t.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=0)
        )
