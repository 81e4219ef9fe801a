"""The bounds every text and every JSON value of a request shares, whichever
API it came by.

What a field means (a time zone, a job of the clock, a coordinate) is the use
cases' to check, with the reason the API gives for it. These are the bounds
below that, which make the two stores accept and refuse the same requests:
PostgreSQL refuses NUL in text and SQLite stores it; neither can hold a lone
surrogate, which a JSON body can spell (``"\\ud800"``) though no UTF-8 can.
A shift's statuses and custom fields are JSON the service keeps unread, so
they are bounded in depth and size and hold finite numbers only.

The gRPC API applies them to decoded messages (``adapters.grpc.guard``), the
HTTP API to its bodies, paths and queries (``adapters.http.bodies``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

#: The longest text inside a JSON value (a status or custom field); the
#: fields of the messages have their own limits, checked by the use cases with
#: the reason the API gives for each (INVALID_NAME for a name, ...).
MAX_JSON_TEXT = 10_000
#: A JSON value (a shift's status or custom field): nesting and encoded size.
MAX_JSON_DEPTH = 16
MAX_JSON_BYTES = 16_384

_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as it is, or None."""
    if "\x00" in value:
        return "text may not contain a NUL character"
    if not value.isascii() and _SURROGATE.search(value):
        return "text may not contain a lone UTF-16 surrogate (\\ud800-\\udfff)"
    return None


def int64_text(text: str) -> int | None:
    """The value of ``text`` if it spells an integer in 0..2**63-1 in ASCII
    digits (a cursor, a sequence number), else None. ``str.isdigit`` alone
    also takes '\u00b2' and other digits ``int`` refuses or reads in ways
    a client never meant."""
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    value = int(text)
    return value if value < 2**63 else None


def json_text_problem(value: str) -> str | None:
    if len(value) > MAX_JSON_TEXT:
        return f"text of {len(value)} characters; the limit is {MAX_JSON_TEXT}"
    return text_problem(value)


def json_value_problem(value: Any) -> str | None:
    """Why a JSON value as Python holds it (dicts, lists, str, numbers,
    booleans, None) cannot be kept, or None."""
    problem = _walk(value, 1)
    if problem:
        return problem
    # Measured once the walk has bounded the depth, so encoding cannot recurse far.
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_JSON_BYTES:
        return f"a JSON value of {size} bytes; the limit is {MAX_JSON_BYTES}"
    return None


def _walk(value: Any, depth: int) -> str | None:
    # Every value counts its depth, containers or not, as the gRPC API's
    # google.protobuf.Value does.
    if depth > MAX_JSON_DEPTH:
        return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    if isinstance(value, str):
        return json_text_problem(value)
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a JSON number"
    if isinstance(value, dict | list):
        children: Iterable[Any]
        if isinstance(value, dict):
            for key in value:
                problem = json_text_problem(key)
                if problem:
                    return f"a key: {problem}"
            children = value.values()
        else:
            children = value
        for child in children:
            problem = _walk(child, depth + 1)
            if problem:
                return problem
    return None
