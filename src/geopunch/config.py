"""Configuration from flags and environment variables."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from geopunch.domain.locations import DEFAULT_MAX_SKEW_S

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "sqlite:///var/geopunch.db"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def hash_key(key: str) -> bytes:
    """SHA-256 of an API key; only these digests are kept in memory."""
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, slots=True)
class Config:
    listen: str = DEFAULT_LISTEN
    database_url: str = DEFAULT_DATABASE_URL
    api_key_hashes: tuple[bytes, ...] = field(default=(), repr=False)
    log_level: str = "INFO"
    max_workers: int = 32
    max_message_bytes: int = 32 * 1024 * 1024
    grace_seconds: float = 10.0
    #: Idempotency keys older than this are forgotten; 0 keeps them forever.
    idempotency_days: float = 7.0
    #: How often the fence index looks for time clocks that other processes changed.
    index_poll_seconds: float = 1.0
    #: Server processes sharing the port and the store (one Python interpreter
    #: runs on one core at a time; each process is one more).
    processes: int = 1
    #: How far ahead of the server's clock a location sample may be stamped.
    max_clock_skew_seconds: float = DEFAULT_MAX_SKEW_S

    @staticmethod
    def from_env(
        env: Mapping[str, str] | None = None, **overrides: str | int | float | None
    ) -> Config:
        """Read ``GEOPUNCH_*`` variables; keyword overrides (flags) win when not None."""
        env = os.environ if env is None else env

        def pick(name: str, var: str, default: str) -> str:
            value = overrides.get(name)
            return str(value) if value is not None else env.get(var, default)

        keys = [k.strip() for k in pick("api_keys", "GEOPUNCH_API_KEYS", "").split(",")]
        keys = [k for k in keys if k]
        if not keys:
            raise ValueError("no API key configured: set GEOPUNCH_API_KEYS or --api-keys")
        if any(len(k) < 8 for k in keys):
            raise ValueError("API keys must have at least 8 characters")
        level = pick("log_level", "GEOPUNCH_LOG_LEVEL", "INFO").upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"log level {level!r} is not one of {', '.join(LOG_LEVELS)}")
        listen = pick("listen", "GEOPUNCH_LISTEN", DEFAULT_LISTEN)
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen address {listen!r} is not host:port")
        workers = int(pick("max_workers", "GEOPUNCH_MAX_WORKERS", "32"))
        if not 1 <= workers <= 1024:
            raise ValueError("max workers must be within 1..1024")
        days = float(pick("idempotency_days", "GEOPUNCH_IDEMPOTENCY_DAYS", "7"))
        if days != 0 and not 1 <= days <= 36500:
            # Punches may arrive up to 12 hours late; a shorter memory would
            # turn a late retry of an accepted punch into a second punch.
            raise ValueError("idempotency days must be 0 (keep forever) or within 1..36500")
        poll_ms = float(pick("index_poll_ms", "GEOPUNCH_INDEX_POLL_MS", "1000"))
        if not 10 <= poll_ms <= 600_000:
            raise ValueError("index poll interval must be within 10..600000 ms")
        processes = int(pick("processes", "GEOPUNCH_PROCESSES", "1"))
        if not 1 <= processes <= 64:
            raise ValueError("processes must be within 1..64")
        skew = float(pick("max_clock_skew_seconds", "GEOPUNCH_MAX_CLOCK_SKEW_SECONDS", "300"))
        if not 0 <= skew <= 86_400:
            raise ValueError("max clock skew must be within 0..86400 seconds")
        return Config(
            listen=listen,
            database_url=pick("database_url", "GEOPUNCH_DATABASE_URL", DEFAULT_DATABASE_URL),
            api_key_hashes=tuple(hash_key(k) for k in keys),
            log_level=level,
            max_workers=workers,
            idempotency_days=days,
            index_poll_seconds=poll_ms / 1000,
            processes=processes,
            max_clock_skew_seconds=skew,
        )
