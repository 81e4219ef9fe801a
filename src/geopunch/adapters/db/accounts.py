"""Accounts and their API keys (store-wide: they decide which account a call is in)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from geopunch.adapters.db.tables import accounts, api_keys
from geopunch.domain.accounts import Account, ApiKey, parse_scopes, scopes_text
from geopunch.domain.errors import DomainError, ErrorCode


class SqlAccountRepository:
    def __init__(self, conn: Connection, now: int) -> None:
        self._conn = conn
        self._now = now

    def create(self, name: str) -> Account:
        next_id = int(self._conn.execute(select(func.max(accounts.c.id))).scalar() or 0) + 1
        try:
            with self._conn.begin_nested():
                self._conn.execute(
                    insert(accounts).values(id=next_id, name=name, created_at=self._now)
                )
        except IntegrityError as exc:
            raise DomainError(
                ErrorCode.ACCOUNT_ALREADY_EXISTS, f"account {name!r} exists already"
            ) from exc
        return Account(next_id, name, self._now)

    def by_name(self, name: str) -> Account | None:
        row = self._conn.execute(select(accounts).where(accounts.c.name == name)).first()
        return None if row is None else Account(row.id, row.name, row.created_at)

    def list_all(self) -> list[Account]:
        rows = self._conn.execute(select(accounts).order_by(accounts.c.id))
        return [Account(r.id, r.name, r.created_at) for r in rows]

    def ids(self) -> list[int]:
        return [int(i) for i in self._conn.execute(select(accounts.c.id)).scalars()]


def _key(r: Row[Any]) -> ApiKey:
    return ApiKey(
        id=r.id,
        account_id=r.account_id,
        label=r.label,
        scopes=parse_scopes(r.scopes),
        salt=bytes(r.salt),
        digest=bytes(r.digest),
        created_at=r.created_at,
        revoked_at=r.revoked_at,
    )


class SqlApiKeyRepository:
    def __init__(self, conn: Connection, now: int) -> None:
        self._conn = conn
        self._now = now
        #: Whether this transaction added or revoked a key (servers reload them).
        self.changed = False

    def add(self, key: ApiKey) -> None:
        self.changed = True
        self._conn.execute(
            insert(api_keys).values(
                id=key.id,
                account_id=key.account_id,
                label=key.label,
                scopes=scopes_text(key.scopes),
                salt=key.salt,
                digest=key.digest,
                created_at=key.created_at,
                revoked_at=key.revoked_at,
            )
        )

    def get(self, key_id: str) -> ApiKey | None:
        row = self._conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return None if row is None else _key(row)

    def list_for(self, account_id: int) -> list[ApiKey]:
        rows = self._conn.execute(
            select(api_keys)
            .where(api_keys.c.account_id == account_id)
            .order_by(api_keys.c.created_at, api_keys.c.id)
        )
        return [_key(r) for r in rows]

    def active(self) -> list[ApiKey]:
        rows = self._conn.execute(select(api_keys).where(api_keys.c.revoked_at.is_(None)))
        return [_key(r) for r in rows]

    def fingerprint(self) -> tuple[int, ...]:
        """Changes whenever a key is added or revoked: a cheap look before a reload."""
        c = api_keys.c
        row = self._conn.execute(
            select(
                func.count(),
                func.count(c.revoked_at),
                func.max(c.created_at),
                func.max(c.revoked_at),
            )
        ).one()
        return tuple(int(v or 0) for v in row)

    def revoke(self, key_id: str) -> bool:
        self.changed = True
        done = self._conn.execute(
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=self._now)
        )
        return bool(done.rowcount)
