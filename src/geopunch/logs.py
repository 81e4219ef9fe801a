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
