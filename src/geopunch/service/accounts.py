"""Accounts and API keys: creating, listing, rotating, revoking, and telling
which account (and scopes) a presented key stands for.

A key reads ``gpk_<id>_<secret>``: the id (public, listed, used in logs)
finds the stored record, and a salted SHA-256 of the whole key is compared
with its digest. The secrets are 256 random bits, so a fast hash is the
right one here (a password hash would only cost every call time).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass

from geopunch.domain.accounts import (
    ALL_SCOPES,
    DEFAULT_ACCOUNT,
    Account,
    ApiKey,
    Principal,
    Scope,
    check_account_name,
    check_label,
)
from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.ports import Clock, UnitOfWork, UnitOfWorkFactory

KEY_PREFIX = "gpk_"
#: Keys given at start-up (flag, environment, file, the quick start's key)
#: are named so in logs, with their place in the list ("bootstrap-0", ...);
#: they belong to the default account with every scope.
BOOTSTRAP_KEY_ID = "bootstrap"


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new key: its record and its secret, which is shown this once."""

    key: ApiKey
    secret: str


def digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


def _issue(account_id: int, scopes: frozenset[Scope], label: str, now: int) -> IssuedKey:
    key_id = secrets.token_hex(6)
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    salt = secrets.token_bytes(16)
    record = ApiKey(key_id, account_id, label, scopes, salt, digest(salt, secret), now)
    return IssuedKey(record, secret)


def _account(uow: UnitOfWork, name: str) -> Account:
    found = uow.accounts.by_name(name)
    if found is None:
        raise DomainError(ErrorCode.ACCOUNT_NOT_FOUND, f"account {name[:64]!r} does not exist")
    return found


def _owned_key(uow: UnitOfWork, key_id: str, account: int | None) -> ApiKey:
    """The key, if it exists and (when ``account`` is given) belongs to it."""
    key = uow.api_keys.get(key_id[:32])
    if key is None or (account is not None and key.account_id != account):
        raise DomainError(ErrorCode.API_KEY_NOT_FOUND, f"API key {key_id[:32]!r} does not exist")
    return key


def create_account(uows: UnitOfWorkFactory, name: str) -> Account:
    check_account_name(name)
    with uows() as uow:
        account = uow.accounts.create(name)
        uow.commit()
    return account


def list_accounts(uows: UnitOfWorkFactory) -> list[Account]:
    with uows(readonly=True) as uow:
        return uow.accounts.list_all()


def account_named(uows: UnitOfWorkFactory, name: str) -> Account:
    with uows(readonly=True) as uow:
        return _account(uow, name)


def create_key(
    uows: UnitOfWorkFactory, clock: Clock, account: int, scopes: frozenset[Scope], label: str = ""
) -> IssuedKey:
    check_label(label)
    if not scopes:
        raise DomainError(ErrorCode.INVALID_ARGUMENT, "a key needs at least one scope")
    issued = _issue(account, scopes, label, int(clock.now()))
    with uows() as uow:
        uow.api_keys.add(issued.key)
        uow.commit()
    return issued


def list_keys(uows: UnitOfWorkFactory, account: int) -> list[ApiKey]:
    with uows(readonly=True) as uow:
        return uow.api_keys.list_for(account)


def rotate_key(
    uows: UnitOfWorkFactory, clock: Clock, key_id: str, account: int | None = None
) -> IssuedKey:
    """A new key with the old one's account, scopes and label; the old one is
    revoked in the same transaction. ``account``: only a key of that account."""
    with uows() as uow:
        old = _owned_key(uow, key_id, account)
        if old.revoked_at is not None:
            raise DomainError(
                ErrorCode.API_KEY_NOT_FOUND, f"API key {key_id[:32]!r} is revoked already"
            )
        issued = _issue(old.account_id, old.scopes, old.label, int(clock.now()))
        uow.api_keys.add(issued.key)
        uow.api_keys.revoke(old.id)
        uow.commit()
    return issued


def revoke_key(uows: UnitOfWorkFactory, key_id: str, account: int | None = None) -> ApiKey:
    """Revokes the key (again: nothing changes); answers it as stored now."""
    with uows() as uow:
        key = _owned_key(uow, key_id, account)
        uow.api_keys.revoke(key.id)
        revoked = uow.api_keys.get(key.id)
        uow.commit()
    assert revoked is not None
    return revoked


class KeyRing:
    """The keys a server accepts: its bootstrap digests and the store's active
    keys, reloaded by ``refresh`` (the index follower calls it every poll, so
    a revoked key stops working on every process within one interval)."""

    def __init__(self, bootstrap_digests: tuple[bytes, ...] = ()) -> None:
        self._bootstrap = bootstrap_digests
        self._keys: dict[str, ApiKey] = {}
        self._fingerprint: tuple[int, ...] | None = None
        self._lock = threading.Lock()

    def refresh(self, uows: UnitOfWorkFactory) -> None:
        with uows(readonly=True) as uow:
            fingerprint = uow.api_keys.fingerprint()
            if fingerprint == self._fingerprint:
                return
            active = uow.api_keys.active()
        with self._lock:
            self._keys = {k.id: k for k in active}
            self._fingerprint = fingerprint

    def count(self) -> int:
        """Keys accepted: the bootstrap ones and the store's active ones."""
        return len(self._bootstrap) + len(self._keys)

    def authenticate(self, presented: str) -> Principal | None:
        """Who ``presented`` is, or None. Time does not tell which part failed."""
        if presented.startswith(KEY_PREFIX):
            key_id = presented[len(KEY_PREFIX) :].partition("_")[0]
            key = self._keys.get(key_id)
            if key is not None and hmac.compare_digest(digest(key.salt, presented), key.digest):
                return Principal(key.account_id, key.scopes, key.id)
            return None
        plain = hashlib.sha256(presented.encode()).digest()
        found = -1
        for i, stored in enumerate(self._bootstrap):
            # No early exit: time does not tell which key matched.
            if hmac.compare_digest(plain, stored):
                found = i
        if found < 0:
            return None
        return Principal(DEFAULT_ACCOUNT, ALL_SCOPES, f"{BOOTSTRAP_KEY_ID}-{found}")
