"""The bounds every field of every request shares, checked once after the
message is decoded and before its handler runs.

What a field means (a time zone, a job of the clock, a fence size, a
coordinate, which must be finite) is the use cases' to check, with the
reason the API gives for it. These are the bounds below that: text without
NUL characters, and JSON values
(``google.protobuf.Value``) that are finite and of bounded depth and size.
PostgreSQL refuses NUL in text and SQLite stores anything; refusing both here
is what makes the two stores accept and refuse the same requests.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from geopunch.domain.errors import DomainError, ErrorCode, FieldViolation

#: The longest text inside a JSON value (a status or custom field); the
#: fields of the messages have their own limits, checked by the use cases with
#: the reason the API gives for each (INVALID_NAME for a name, ...).
MAX_JSON_TEXT = 10_000
#: A JSON value (a shift's status or custom field): nesting and encoded size.
MAX_JSON_DEPTH = 16
MAX_JSON_BYTES = 16_384
#: Violations named in one answer; more are summed up in the last one.
MAX_VIOLATIONS = 20

_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
_JSON = {"google.protobuf.Value", "google.protobuf.Struct", "google.protobuf.ListValue"}


def check_request(message: Any) -> None:
    """Raise INVALID_ARGUMENT naming every field outside the shared bounds."""
    found: list[FieldViolation] = []
    _walk(message, "", found)
    if found:
        if len(found) > MAX_VIOLATIONS:
            more = len(found) - MAX_VIOLATIONS + 1
            found = [
                *found[: MAX_VIOLATIONS - 1],
                FieldViolation("", f"and {more} more", ErrorCode.INVALID_ARGUMENT),
            ]
        raise DomainError.from_violations(found, "request")


def _text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "text may not contain a NUL character"
    return None


def _json_text_problem(value: str) -> str | None:
    if len(value) > MAX_JSON_TEXT:
        return f"text of {len(value)} characters; the limit is {MAX_JSON_TEXT}"
    return _text_problem(value)


def _add(found: list[FieldViolation], path: str, problem: str) -> None:
    found.append(FieldViolation(path, problem, ErrorCode.INVALID_ARGUMENT))


def _walk(message: Any, prefix: str, found: list[FieldViolation]) -> None:
    for fd, value in message.ListFields():
        path = f"{prefix}{fd.name}"
        repeated = fd.is_repeated
        if fd.type == _STRING:
            if repeated:
                for i, text in enumerate(value):
                    problem = _text_problem(text)
                    if problem:
                        _add(found, f"{path}[{i}]", problem)
            else:
                problem = _text_problem(value)
                if problem:
                    _add(found, path, problem)
        elif fd.type == _MESSAGE:
            if fd.message_type.GetOptions().map_entry:
                continue  # geopunch's requests have no maps
            items = (
                [(f"{path}[{i}]", item) for i, item in enumerate(value)]
                if repeated
                else [(path, value)]
            )
            for where, item in items:
                if fd.message_type.full_name in _JSON:
                    problem = _json_problem(item)
                    if problem:
                        _add(found, where, problem)
                else:
                    _walk(item, f"{where}.", found)


def _json_problem(value: Any) -> str | None:
    size = value.ByteSize()
    if size > MAX_JSON_BYTES:
        return f"a JSON value of {size} bytes; the limit is {MAX_JSON_BYTES}"
    return _json_walk(value, 1)


def _json_walk(value: Any, depth: int) -> str | None:
    if depth > MAX_JSON_DEPTH:
        return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    name = value.DESCRIPTOR.full_name
    children: list[Any]
    if name == "google.protobuf.Struct":
        for key in value.fields:
            problem = _json_text_problem(key)
            if problem:
                return f"a key: {problem}"
        children = list(value.fields.values())
    elif name == "google.protobuf.ListValue":
        children = list(value.values)
    else:
        kind = value.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(value.number_value):
            return f"{value.number_value} is not a JSON number"
        if kind == "string_value":
            return _json_text_problem(value.string_value)
        if kind == "struct_value":
            children = [value.struct_value]
        elif kind == "list_value":
            children = [value.list_value]
        else:
            return None
        return _first(children, depth)
    return _first(children, depth + 1)


def _first(children: list[Any], depth: int) -> str | None:
    for child in children:
        problem = _json_walk(child, depth)
        if problem:
            return problem
    return None
