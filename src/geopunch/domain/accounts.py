"""Accounts, API keys and scopes: who may call, and on whose resources."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from geopunch.domain.errors import DomainError, ErrorCode, FieldViolation

#: The account that existing data moved into, and that keys given to the
#: server at start-up (flag, environment, the quick start's key) belong to.
DEFAULT_ACCOUNT = 1
DEFAULT_ACCOUNT_NAME = "default"

_ACCOUNT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
MAX_LABEL = 255


class Scope(StrEnum):
    """What a key may do. ``read`` lists, gets, checks and validates;
    ``punch`` records punches and live positions; ``admin`` changes time
    clocks, schedulers, fences and keys."""

    READ = "read"
    PUNCH = "punch"
    ADMIN = "admin"


ALL_SCOPES = frozenset(Scope)


def parse_scopes(text: str) -> frozenset[Scope]:
    """``read,punch`` as scopes; at least one, each a known name."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted({n for n in names if n not in Scope.__members__.values()})
    if unknown or not names:
        raise DomainError(
            ErrorCode.INVALID_ARGUMENT,
            f"scopes must be a comma-separated list of {', '.join(Scope)}; got {text[:64]!r}",
        )
    return frozenset(Scope(n) for n in names)


def scopes_of(names: Sequence[str], field: str = "scopes") -> frozenset[Scope]:
    """A key's scopes as the APIs take them, a list of names: each exactly
    one scope's name (the comma-separated text of the CLI is
    ``parse_scopes``'s), and at least one. Each problem names its item."""
    known = ", ".join(Scope)
    problems = [
        FieldViolation(
            f"{field}[{i}]",
            f"{name[:64]!r} is not a scope; one of {known}",
            ErrorCode.INVALID_ARGUMENT,
        )
        for i, name in enumerate(names)
        if name not in Scope.__members__.values()
    ]
    if not names:
        said = f"at least one scope: {known}"
        problems.append(FieldViolation(field, said, ErrorCode.INVALID_ARGUMENT))
    if problems:
        raise DomainError.from_violations(problems, "the key's scopes")
    return frozenset(Scope(n) for n in names)


def scopes_text(scopes: frozenset[Scope]) -> str:
    return ",".join(sorted(scopes))


def check_account_name(name: str) -> str:
    if not _ACCOUNT_NAME.fullmatch(name):
        raise DomainError(
            ErrorCode.INVALID_ARGUMENT,
            "an account name is 1-64 characters of a-z, 0-9, '_', '.' and '-', "
            f"starting with a letter or digit; got {name[:64]!r}",
        )
    return name


def check_label(label: str) -> str:
    if len(label) > MAX_LABEL or any(ord(c) < 32 for c in label):
        raise DomainError(
            ErrorCode.INVALID_ARGUMENT,
            f"a key label is at most {MAX_LABEL} printable characters",
        )
    return label


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    created_at: int


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key: never its secret, only a salted digest of it."""

    id: str
    account_id: int
    label: str
    scopes: frozenset[Scope]
    salt: bytes
    digest: bytes
    created_at: int
    revoked_at: int | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the account whose resources the call sees, and its scopes.

    ``key_id`` names the key in logs (``bootstrap`` for keys given at start-up).
    """

    account_id: int
    scopes: frozenset[Scope]
    key_id: str

    def require(self, scope: Scope, method: str) -> None:
        if scope not in self.scopes:
            raise DomainError(
                ErrorCode.SCOPE_REQUIRED,
                f"{method} needs the '{scope}' scope; this key has "
                f"{scopes_text(self.scopes) or 'none'}",
                {"scope": scope.value},
            )
