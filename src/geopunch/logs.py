"""JSON-lines logging with the request id of the current call."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime

from geopunch import metrics
from geopunch.domain.errors import Unavailable
from geopunch.tracing import trace_id

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

#: A request id a caller may choose (``x-request-id``): printable, short, no spaces.
_CALLER_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def new_request_id(offered: str | bytes | None = None) -> str:
    """The caller's ``x-request-id`` when it is a sane token, else a fresh UUID,
    so that one id follows a request through the caller's logs and ours."""
    if isinstance(offered, bytes):
        offered = offered.decode("latin-1")
    if offered and _CALLER_REQUEST_ID.fullmatch(offered):
        return offered
    return str(uuid.uuid4())


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            # ISO-8601 in UTC to the millisecond: what log stores and people read.
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[
                :-6
            ]
            + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self._worker is not None:
            entry["worker"] = self._worker
        rid = request_id_var.get()
        if rid:
            entry["request_id"] = rid
        trace = trace_id()
        if trace is not None:
            entry["trace_id"] = trace
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str, worker: int | None = None) -> None:
    """JSON lines on stderr; a worker of ``serve --processes`` tags each with its number."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.Formatter.converter = time.gmtime
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))


class Throttle:
    """Admits a key at most once every ``every_s``, counting the times it
    was turned away since it was last admitted."""

    def __init__(self, every_s: float = 1.0, keys: int = 4096) -> None:
        self._every_s = every_s
        self._keys = keys
        self._last: dict[object, tuple[float, int]] = {}

    def admit(self, key: object) -> int | None:
        """None if ``key`` was admitted within the last ``every_s``; else the
        number of times it was turned away since."""
        now = time.monotonic()
        last, dropped = self._last.get(key, (-self._every_s, 0))
        if now - last < self._every_s:
            self._last[key] = (last, dropped + 1)
            return None
        if len(self._last) >= self._keys:  # forget the oldest keys, not memory
            for old in list(self._last)[: self._keys // 2]:
                del self._last[old]
        self._last[key] = (now, 0)
        return dropped


class RateLimitedLog:
    """At most one line a second per peer host and message, with a count of
    the lines left out since the last one, and no traceback: for calls that
    cost nothing to send (no key, an undecodable message), so that they
    cannot flood the log. By host, not address and port: a new connection a
    call would otherwise get a line each."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._throttle = Throttle()

    def note(self, peer: str, level: int, msg: str, fields: dict[str, object]) -> None:
        """Log ``msg`` for ``peer`` (``host:port`` or gRPC's ``ipv4:host:port``)
        unless it had a line within the last second."""
        dropped = self._throttle.admit((peer.rpartition(":")[0] or peer, msg))
        if dropped is not None:
            fields = {**fields, "peer": peer[:64], "suppressed": dropped}
            self._log.log(level, msg, extra={"fields": fields})


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An error's first line, for a log field: a driver's error wrapped by
    SQLAlchemy is read from the driver's own (``orig``), without the
    statement and parameters SQLAlchemy adds."""
    raw = getattr(exc, "orig", None) or exc
    return (str(raw).strip().splitlines() or [type(raw).__name__])[0][:limit]


class FailureLog:
    """A background loop's consecutive failures, logged sparingly: the first
    with its stack, then a line a minute with the count and the latest
    error, then one line when the loop works again. A store that is away
    fails every loop every second: a line each with its stack was about 7 KB
    a second for each loop and process. A store or broker that cannot
    answer (``Unavailable``) is expected in operation, and logged without a
    stack."""

    #: Seconds between the lines of one run of failures.
    EVERY_S = 60.0

    def __init__(self, what: str, logger: logging.Logger | None = None) -> None:
        self.what, self.count, self.logged_at, self.since = what, 0, 0.0, 0.0
        self._log = logger or logging.getLogger("geopunch")

    def failed(self, exc: BaseException) -> None:
        # Counted every time, though logged sparingly: an alert needs to see
        # a loop that keeps failing after its first line.
        metrics.BACKGROUND_FAILURES.labels(self.what).inc()
        now = time.monotonic()
        self.count += 1
        if self.count == 1:
            self.since = now
        elif now - self.logged_at < self.EVERY_S:
            return
        self.logged_at = now
        fields: dict[str, object] = {"failures": self.count}
        if self.count == 1 and not isinstance(exc, Unavailable):
            self._log.error(f"{self.what} failed", exc_info=exc, extra={"fields": fields})
            return
        fields.update(error=first_line(exc), failing_s=round(now - self.since, 1))
        self._log.error(f"{self.what} failed", extra={"fields": fields})

    def succeeded(self) -> None:
        if self.count:
            fields = {"failures": self.count, "failing_s": round(time.monotonic() - self.since, 1)}
            self._log.info(f"{self.what} recovered", extra={"fields": fields})
            self.count = 0


class OncePerSecond(logging.Filter):
    """Lets each message through at most once a second, with a count of the
    ones held back since: for a library's lines that a caller without a key
    can cause at will (uvicorn's warning for each malformed request)."""

    def __init__(self) -> None:
        super().__init__()
        self._throttle = Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        dropped = self._throttle.admit(record.msg)
        if dropped is None:
            return False
        record.fields = {**getattr(record, "fields", {}), "suppressed": dropped}
        return True
