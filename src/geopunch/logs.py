"""JSON-lines logging with the request id of the current call."""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import queue
import re
import sys
import threading
import time
import uuid
from typing import TextIO

import orjson

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


#: The last second stamped, and its text: most lines share their second
#: with the line before, and a call's access line is on its hot path.
_second: tuple[int, str] = (-1, "")


def _stamp(created: float) -> str:
    """ISO-8601 in UTC to the millisecond: what log stores and people read."""
    global _second
    whole = int(created)
    second = _second
    if second[0] != whole:
        second = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{second[1]}.{int((created - whole) * 1000):03d}Z"


def _dumps(entry: dict[str, object]) -> str:
    """One JSON line, through orjson: every call writes an access line, and
    the standard library's encoder costs several times as much."""
    try:
        return orjson.dumps(entry, default=str).decode()
    except TypeError:  # what orjson will not take (an integer past 64 bits, say)
        return json.dumps(entry, default=str)


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry = self._entry(record)
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
        return _dumps(entry)

    def line(self, level: int, msg: str, fields: dict[str, object]) -> str:
        """A line of the log's own, outside any call's context."""
        record = logging.LogRecord("geopunch", level, "", 0, msg, None, None)
        return _dumps({**self._entry(record), **fields})

    def _entry(self, record: logging.LogRecord) -> dict[str, object]:
        entry: dict[str, object] = {
            "ts": _stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self._worker is not None:
            entry["worker"] = self._worker
        return entry


#: How long the writer lets lines gather after the first before it writes.
_GATHER_S = 0.01


class _Buffered(logging.Handler):
    """Hands each line to a writer thread through a bounded buffer, so that
    a log reader that stalls (a full pipe to journald or a container
    runtime's log driver) never holds up a call: the write to stderr blocks
    the writer thread alone, and lines past the buffer are dropped and
    counted (``geopunch_log_lines_dropped_total``), then said in one line
    once there is room again.

    A line is formatted here, on the caller's thread, where its request id
    and trace are; the writer joins the lines waiting into one write. The
    standard library's ``QueueHandler``/``QueueListener`` pair would write a
    line at a time, and its stop waits for a stalled stderr without bound."""

    def __init__(self, stream: TextIO, formatter: JsonFormatter, lines: int) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self._json = formatter
        self._stream = stream
        self._lines: queue.Queue[str | None] = queue.Queue(lines)
        self._dropped = 0
        self._writer = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle holds the handler's lock around emit: one caller at a time.
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if self._dropped:
            said = self._json.line(
                logging.WARNING,
                "log lines dropped",
                {"dropped": self._dropped, "why": "stderr did not take them in time"},
            )
            if not self._offer(said):  # no line goes ahead of the count of those before it
                self._drop()
                return
            self._dropped = 0
        if not self._offer(line):
            self._drop()

    def _drop(self) -> None:
        self._dropped += 1
        metrics.LOG_LINES_DROPPED.inc()

    def _offer(self, line: str) -> bool:
        try:
            self._lines.put_nowait(line)
        except queue.Full:
            return False
        return True

    def _write(self) -> None:
        while True:
            batch = [self._lines.get()]
            # A moment for more to come: one wake-up and one write for a
            # burst rather than a wake-up a line, each taking the GIL from
            # the threads that answer calls.
            time.sleep(_GATHER_S)
            while batch[-1] is not None and len(batch) < 4096:
                try:
                    batch.append(self._lines.get_nowait())
                except queue.Empty:
                    break
            done = batch[-1] is None
            lines = [b for b in batch if b is not None]
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except (OSError, ValueError):  # stderr closed: nowhere to say it
                    metrics.LOG_LINES_DROPPED.inc(len(lines))
            if done:
                return

    def close(self, timeout_s: float = 2.0) -> None:
        """Write what is waiting, for at most ``timeout_s``: an exit must not
        wait for good on a stalled stderr."""
        deadline = time.monotonic() + timeout_s
        if self._writer.is_alive():
            try:
                self._lines.put(None, timeout=timeout_s)
            except queue.Full:
                pass
            else:
                self._writer.join(max(0.0, deadline - time.monotonic()))
        super().close()


#: The buffered handler of the last ``setup_logging`` call, if any.
_buffered: list[_Buffered] = []


def close_logging() -> None:
    """Write the lines still waiting (for a moment at most), stop the writer
    thread, and write any later line at once. Runs at exit; a process that
    leaves without running ``atexit`` (a ``multiprocessing`` child) calls it
    itself, as does anything about to write to stderr past the log."""
    root = logging.getLogger()
    while _buffered:
        handler = _buffered.pop()
        if handler in root.handlers:
            plain = logging.StreamHandler(sys.stderr)
            plain.setFormatter(handler.formatter)
            root.handlers[root.handlers.index(handler)] = plain
        handler.close()


atexit.register(close_logging)


def setup_logging(level: str, worker: int | None = None, buffer_lines: int = 0) -> None:
    """JSON lines on stderr; a worker of ``serve --processes`` tags each with
    its number. ``buffer_lines``: lines held for stderr while it is not
    taking them, written by a thread of their own (``_Buffered``); 0 writes
    each line on the caller's thread, waiting for stderr as long as it takes
    (commands that run and exit)."""
    close_logging()
    formatter = JsonFormatter(worker)
    handler: logging.Handler
    if buffer_lines:
        buffered = _Buffered(sys.stderr, formatter, buffer_lines)
        _buffered.append(buffered)
        handler = buffered
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.Formatter.converter = time.gmtime
    # What a record would gather that the JSON lines never show: the caller's
    # file and line (a walk up the stack), the thread's and process's names.
    # The logging HOWTO's "Optimization" section names these switches.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
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
