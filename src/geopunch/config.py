"""Configuration from flags and environment variables."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from geopunch.domain.locations import DEFAULT_MAX_SKEW_S
from geopunch.service.events import STREAMS_PER_KEY

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_HTTP_LISTEN = "127.0.0.1:8080"
DEFAULT_DATABASE_URL = "sqlite:///var/geopunch.db"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


#: Variables that hold secrets: read once, then removed from the process
#: environment, so that no child process (a ``--processes`` worker) inherits them.
SECRET_VARIABLES = ("GEOPUNCH_API_KEYS",)


def database_url(given: str | None) -> str:
    """The store of a command other than ``serve``: its ``--database-url``,
    else ``GEOPUNCH_DATABASE_URL``, else the default."""
    return given or os.environ.get("GEOPUNCH_DATABASE_URL", DEFAULT_DATABASE_URL)


def hash_key(key: str) -> bytes:
    """SHA-256 of a bootstrap API key; only these digests are kept in memory."""
    return hashlib.sha256(key.encode()).digest()


#: An origin as a browser sends it: no path, no trailing slash.
_ORIGIN = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


def _check_address(address: str, what: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"{what} {address!r} is not host:port")


def _read_keys_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return ",".join(line.strip() for line in f if line.strip() and line[0] != "#")
    except OSError as exc:
        raise ValueError(f"cannot read the API keys file {path!r}: {exc.strerror}") from exc


@dataclass(frozen=True, slots=True)
class _Number:
    """A numeric setting: its flag's (and Config's) name, which names its
    variable too, its default, and its bounds. ``zero``: what 0 means, where
    it is allowed below ``low``; ``low_open``: ``low`` itself is not allowed."""

    name: str
    default: str
    kind: type[int] | type[float]
    low: float
    high: float
    what: str
    unit: str = ""
    zero: str = ""
    low_open: bool = False

    @property
    def var(self) -> str:
        return f"GEOPUNCH_{self.name.upper()}"

    def check(self, value: float) -> float:
        if self.zero and value == 0:
            return value
        above = self.low < value if self.low_open else self.low <= value
        if not (above and value <= self.high):  # NaN fails both
            zero = f"0 ({self.zero}) or " if self.zero else ""
            raise ValueError(
                f"{self.what} must be {zero}within {self.low:g}..{self.high:g}{self.unit}"
            )
        return value


# One row a setting, read as a table: name (flag and Config field), default,
# type, bounds, what it is called in an error, its unit, what 0 means.
# fmt: off
_NUMBERS = (
    _Number("receive_timeout_seconds", "10", float, 0.1, 600, "receive timeout", " seconds"),
    _Number("max_streams_per_key", str(STREAMS_PER_KEY), int, 1, 10_000, "max streams per key"),
    _Number("max_workers", "32", int, 1, 1024, "max workers"),
    # Punches may arrive up to 12 hours late; a shorter memory would turn a
    # late retry of an accepted punch into a second punch.
    _Number("idempotency_days", "7", float, 1, 36500, "idempotency days", zero="keep forever"),
    _Number("event_retention_days", "30", float, 1, 36500, "event retention days",
            zero="keep forever"),
    _Number("index_poll_ms", "1000", float, 10, 600_000, "index poll interval", " ms"),
    _Number("processes", "1", int, 1, 64, "processes"),
    _Number("grace_seconds", "10", float, 0, 3600, "grace", " seconds"),
    _Number("store_timeout_seconds", "30", float, 1, 3600, "store timeout", " seconds"),
    _Number("worker_timeout_seconds", "30", float, 3, 3600, "worker timeout", " seconds",
            zero="none"),
    _Number("worker_start_timeout_seconds", "300", float, 1, 86_400, "worker start timeout",
            " seconds"),
    _Number("kernel_threads", "0", int, 1, 1024, "kernel threads", zero="follow the cores"),
    _Number("max_clock_skew_seconds", "300", float, 0, 86_400, "max clock skew", " seconds"),
    _Number("webhook_retry_hours", "24", float, 0, 24 * 30, "webhook retry hours",
            low_open=True),
    _Number("webhook_timeout_seconds", "10", float, 0.1, 120, "webhook timeout", " seconds"),
    _Number("webhook_attempts_days", "7", float, 0, 36500, "webhook attempts days",
            low_open=True),
    _Number("webhook_lease_seconds", "30", float, 1, 3600, "webhook lease", " seconds"),
    _Number("log_buffer_lines", "10000", int, 1, 1_000_000, "log buffer lines",
            zero="wait for stderr"),
)
# fmt: on


@dataclass(frozen=True, slots=True)
class Config:
    listen: str = DEFAULT_LISTEN
    #: host:port of the HTTP/JSON API; empty: off.
    http_listen: str = ""
    #: Web origins whose pages may call the HTTP API (CORS); "*" for any.
    http_allow_origins: tuple[str, ...] = ()
    #: host:port of a listener for /metrics alone (for when the HTTP API is
    #: off, or kept private); empty: none.
    metrics_listen: str = ""
    database_url: str = DEFAULT_DATABASE_URL
    api_key_hashes: tuple[bytes, ...] = field(default=(), repr=False)
    log_level: str = "INFO"
    #: Log lines held for stderr while it is not taking them; past them lines
    #: are dropped and counted. 0: every line waits for stderr.
    log_buffer_lines: int = 10_000
    max_workers: int = 32
    max_message_bytes: int = 32 * 1024 * 1024
    #: How long a stop lets calls in flight finish.
    grace_seconds: float = 10.0
    #: How long the store may keep a call waiting (a connection, SQLite's
    #: write lock, a PostgreSQL statement or lock) before the call is
    #: answered UNAVAILABLE.
    store_timeout_seconds: float = 30.0
    #: Idempotency keys older than this are forgotten; 0 keeps them forever.
    idempotency_days: float = 7.0
    #: Events recorded longer ago than this are removed; 0 keeps them forever.
    event_retention_days: float = 30.0
    #: How often the fence index looks for time clocks that other processes changed.
    index_poll_seconds: float = 1.0
    #: Where the fence index is saved so that a restart need not rebuild it:
    #: a file path, "off", or "auto" (beside a SQLite database file).
    index_checkpoint: str = "auto"
    #: Server processes sharing the port and the store (one Python interpreter
    #: runs on one core at a time; each process is one more).
    processes: int = 1
    #: With ``processes`` > 1: a worker whose event loop has not run for this
    #: long is killed (its stacks logged first) and started again; 0: never.
    worker_timeout_seconds: float = 30.0
    #: With ``processes`` > 1: how long a worker may take to start serving
    #: (its store opened, its index loaded) before it is killed and tried again.
    worker_start_timeout_seconds: float = 300.0
    #: Threads each process's parallel fence kernels may use; 0: the cores
    #: this process may run on, divided among ``processes``.
    kernel_threads: int = 0
    #: The event loops of the servers (gRPC and HTTP share one) and of the
    #: deliveries: "uvloop", "asyncio", or "auto" (uvloop where it is installed).
    event_loop: str = "auto"
    #: How far ahead of the server's clock a location sample may be stamped.
    max_clock_skew_seconds: float = DEFAULT_MAX_SKEW_S
    #: PEM files: the server's certificate chain and key (both or neither), and
    #: the CA whose certificates clients must present (optional).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    #: Seconds a call may take to send its request message.
    receive_timeout_seconds: float = 10.0
    #: Event streams one API key may hold open at once.
    max_streams_per_key: int = STREAMS_PER_KEY
    #: Webhook URLs may resolve to loopback and private addresses.
    webhook_allow_private: bool = False
    #: How long the event at a subscription's head is retried before the
    #: subscription is marked failing.
    webhook_retry_hours: float = 24.0
    #: One delivery attempt's limit.
    webhook_timeout_seconds: float = 10.0
    #: Delivery attempts are listed for this long.
    webhook_attempts_days: float = 7.0
    #: A deliverer's hold on a subscription; a killed one's is taken over after it.
    webhook_lease_seconds: float = 30.0
    #: The JetStream sink: the NATS server ("" for none), the stream, and the
    #: subjects' prefix (``<prefix>.<account>.<type>``).
    nats_url: str = ""
    nats_stream: str = "GEOPUNCH_EVENTS"
    nats_subject_prefix: str = "geopunch.events"

    @staticmethod
    def from_env(
        env: Mapping[str, str] | None = None, **overrides: str | int | float | None
    ) -> Config:
        """Read ``GEOPUNCH_*`` variables; keyword overrides (flags) win when not None."""
        env = os.environ if env is None else env

        def pick(name: str, var: str, default: str) -> str:
            value = overrides.get(name)
            return str(value) if value is not None else env.get(var, default)

        def number(spec: _Number) -> float:
            text = pick(spec.name, spec.var, spec.default)
            try:
                value = spec.kind(text)
            except ValueError:
                what = "a whole number" if spec.kind is int else "a number"
                raise ValueError(f"{spec.var} must be {what}, not {text!r}") from None
            return spec.check(value)

        numbers = {spec.name: number(spec) for spec in _NUMBERS}
        poll_ms = numbers.pop("index_poll_ms")
        listed = pick("api_keys", "GEOPUNCH_API_KEYS", "")
        keys_file = pick("api_keys_file", "GEOPUNCH_API_KEYS_FILE", "")
        if keys_file:
            listed = ",".join(filter(None, (listed, _read_keys_file(keys_file))))
        keys = [k.strip() for k in listed.split(",")]
        keys = [k for k in keys if k]
        if any(len(k) < 8 for k in keys):
            raise ValueError("API keys must have at least 8 characters")
        tls_cert = pick("tls_cert", "GEOPUNCH_TLS_CERT", "")
        tls_key = pick("tls_key", "GEOPUNCH_TLS_KEY", "")
        tls_client_ca = pick("tls_client_ca", "GEOPUNCH_TLS_CLIENT_CA", "")
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
        if tls_client_ca and not tls_cert:
            raise ValueError(
                "client certificates (--tls-client-ca) need TLS (--tls-cert/--tls-key)"
            )
        for path in (tls_cert, tls_key, tls_client_ca):
            if path and not os.path.isfile(path):
                raise ValueError(f"TLS file {path!r} does not exist")
        level = pick("log_level", "GEOPUNCH_LOG_LEVEL", "INFO").upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"log level {level!r} is not one of {', '.join(LOG_LEVELS)}")
        listen = pick("listen", "GEOPUNCH_LISTEN", DEFAULT_LISTEN)
        _check_address(listen, "listen address")
        http_listen = pick("http_listen", "GEOPUNCH_HTTP_LISTEN", DEFAULT_HTTP_LISTEN)
        if http_listen.lower() == "off":
            http_listen = ""
        else:
            _check_address(http_listen, "HTTP listen address")
        origins = pick("http_allow_origins", "GEOPUNCH_HTTP_ALLOW_ORIGINS", "")
        allow_origins = tuple(o.strip() for o in origins.split(",") if o.strip())
        for origin in allow_origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not a web origin: scheme, host and port alone, such as "
                    "https://kiosk.example.com or http://localhost:3000 (or * for any)"
                )
        metrics_listen = pick("metrics_listen", "GEOPUNCH_METRICS_LISTEN", "")
        if metrics_listen:
            _check_address(metrics_listen, "metrics listen address")
        checkpoint = pick("index_checkpoint", "GEOPUNCH_INDEX_CHECKPOINT", "auto").strip()
        if checkpoint.lower() in ("auto", "off", ""):
            checkpoint = checkpoint.lower() or "auto"
        elif not os.path.isdir(os.path.dirname(os.path.abspath(checkpoint))):
            raise ValueError(f"the index checkpoint's directory does not exist: {checkpoint!r}")
        event_loop = pick("event_loop", "GEOPUNCH_EVENT_LOOP", "auto").lower()
        if event_loop not in EVENT_LOOPS:
            raise ValueError(f"event loop {event_loop!r} is not one of {', '.join(EVENT_LOOPS)}")
        allow_private = pick("webhook_allow_private", "GEOPUNCH_WEBHOOK_ALLOW_PRIVATE", "0")
        if allow_private.lower() not in ("0", "1", "true", "false", ""):
            raise ValueError("GEOPUNCH_WEBHOOK_ALLOW_PRIVATE must be 0 or 1")
        nats_url = pick("nats_url", "GEOPUNCH_NATS_URL", "")
        if nats_url and not nats_url.startswith(("nats://", "tls://")):
            raise ValueError("the NATS URL must start with nats:// or tls://")
        nats_stream = pick("nats_stream", "GEOPUNCH_NATS_STREAM", "GEOPUNCH_EVENTS")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", nats_stream):
            raise ValueError("the NATS stream name takes letters, digits, '_' and '-'")
        nats_prefix = pick("nats_subject_prefix", "GEOPUNCH_NATS_SUBJECT_PREFIX", "geopunch.events")
        if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", nats_prefix):
            raise ValueError(
                "the NATS subject prefix takes dot-separated tokens of letters and digits"
            )
        return Config(
            listen=listen,
            http_listen=http_listen,
            metrics_listen=metrics_listen,
            http_allow_origins=allow_origins,
            database_url=pick("database_url", "GEOPUNCH_DATABASE_URL", DEFAULT_DATABASE_URL),
            api_key_hashes=tuple(hash_key(k) for k in keys),
            log_level=level,
            index_poll_seconds=poll_ms / 1000,
            index_checkpoint=checkpoint,
            event_loop=event_loop,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            webhook_allow_private=allow_private.lower() in ("1", "true"),
            nats_url=nats_url,
            nats_stream=nats_stream,
            nats_subject_prefix=nats_prefix,
            **numbers,  # type: ignore[arg-type]
        )

    def fence_kernel_threads(self) -> int:
        """Threads for one process's parallel fence kernels: the setting, or
        the cores this process may use shared among the ``processes``."""
        if self.kernel_threads:
            return self.kernel_threads
        return max(1, len(os.sched_getaffinity(0)) // self.processes)

    @staticmethod
    def forget_secrets(env: dict[str, str] | None = None) -> None:
        """Drop secret variables from the environment (after ``from_env`` read them)."""
        target = os.environ if env is None else env
        for name in SECRET_VARIABLES:
            target.pop(name, None)
