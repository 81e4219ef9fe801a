"""The shared bounds of ``domain.bounds`` applied to every field of every
request, once after the message is decoded and before its handler runs:
text without NUL characters, and JSON values (``google.protobuf.Value``)
that are finite and of bounded depth and size. (protobuf's decoder already
refuses text that is not UTF-8, so no lone surrogate gets this far.)

The walk here reads protobuf's JSON types where they are; the HTTP API
checks plain Python values with ``domain.bounds.json_value_problem``.
"""

from __future__ import annotations

import math
from itertools import chain
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from geopunch.domain.bounds import (
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    json_text_problem,
    text_problem,
)
from geopunch.domain.errors import DomainError, ErrorCode, FieldViolation

#: Violations named in one answer; more are summed up in the last one.
MAX_VIOLATIONS = 20

_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
_JSON = {"google.protobuf.Value", "google.protobuf.Struct", "google.protobuf.ListValue"}


def check_request(message: Any) -> None:
    """Raise INVALID_ARGUMENT naming every field outside the shared bounds."""
    if _clean([message], message.DESCRIPTOR):
        return
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


def _add(found: list[FieldViolation], path: str, problem: str) -> None:
    found.append(FieldViolation(path, problem, ErrorCode.INVALID_ARGUMENT))


#: What the walk does with a field: nothing, a text, texts, a message,
#: messages, a JSON value, JSON values.
_SKIP, _TEXT, _TEXTS, _ONE, _MANY, _JSON_ONE, _JSON_MANY = range(7)
#: Each field's kind, worked out from its descriptor once: asking the
#: descriptor for every field of every message was most of the walk's time
#: (bench/README.md).
_kinds: dict[FieldDescriptor, int] = {}


def _kind(fd: FieldDescriptor) -> int:
    kind = _kinds.get(fd)
    if kind is None:
        many = fd.is_repeated
        inner = fd.message_type
        if fd.type == _STRING:
            kind = _TEXTS if many else _TEXT
        elif fd.type != _MESSAGE or inner is None or inner.GetOptions().map_entry:
            kind = _SKIP  # geopunch's requests have no maps
        elif inner.full_name in _JSON:
            kind = _JSON_MANY if many else _JSON_ONE
        else:
            kind = _MANY if many else _ONE
        _kinds[fd] = kind
    return kind


#: Per message type, the fields the guard looks at: (name, kind, message
#: type, whether an unset one must be skipped).
_plans: dict[Any, tuple[tuple[str, int, Any, bool], ...]] = {}


def _plan(descriptor: Any) -> tuple[tuple[str, int, Any, bool], ...]:
    plan = _plans.get(descriptor)
    if plan is None:
        plan = tuple(
            (fd.name, kind, fd.message_type, kind == _ONE and _reaches(fd.message_type, descriptor))
            for fd in descriptor.fields
            if (kind := _kind(fd)) != _SKIP
        )
        _plans[descriptor] = plan
    return plan


def _reaches(start: Any, target: Any) -> bool:
    """Whether messages of type ``start`` can hold one of type ``target``."""
    seen, todo = set(), [start]
    while todo:
        descriptor = todo.pop()
        if descriptor is target:
            return True
        if descriptor.full_name in seen:
            continue
        seen.add(descriptor.full_name)
        todo.extend(fd.message_type for fd in descriptor.fields if fd.message_type is not None)
    return False


def _clean(items: list[Any], descriptor: Any) -> bool:
    """Whether no field of any of ``items`` (messages of one type) breaks a
    bound: a field at a time over all items (a 1,000-fence request in about a
    tenth of the walk's time, which is per message and per field). Only a
    request that fails it is walked, for the paths of its problems."""
    for name, kind, inner, only_set in _plan(descriptor):
        if kind == _TEXT:
            if "\x00" in "".join([getattr(m, name) for m in items]):
                return False
        elif kind == _TEXTS:
            if "\x00" in "".join(chain.from_iterable([getattr(m, name) for m in items])):
                return False
        elif kind == _ONE:
            # An unset message reads as an empty one, which has nothing to
            # refuse; asking HasField costs twice the read, so only a type
            # that can hold itself (where the reads would never end) asks.
            if only_set:
                inside = [getattr(m, name) for m in items if m.HasField(name)]
            else:
                inside = [getattr(m, name) for m in items]
            if inside and not _clean(inside, inner):
                return False
        elif kind == _MANY:
            inside = [x for m in items for x in getattr(m, name)]
            if inside and not _clean(inside, inner):
                return False
        else:
            if kind == _JSON_ONE:
                values = [getattr(m, name) for m in items if m.HasField(name)]
            else:
                values = [x for m in items for x in getattr(m, name)]
            if any(_json_problem(v) for v in values):
                return False
    return True


def _walk(message: Any, prefix: str, found: list[FieldViolation]) -> None:
    for fd, value in message.ListFields():
        kind = _kind(fd)
        if kind == _SKIP:
            continue
        if kind == _TEXT:
            problem = text_problem(value)
            if problem:
                _add(found, f"{prefix}{fd.name}", problem)
        elif kind == _TEXTS:
            for i, text in enumerate(value):
                problem = text_problem(text)
                if problem:
                    _add(found, f"{prefix}{fd.name}[{i}]", problem)
        elif kind == _ONE:
            _walk(value, f"{prefix}{fd.name}.", found)
        elif kind == _MANY:
            path = f"{prefix}{fd.name}"
            for i, item in enumerate(value):
                _walk(item, f"{path}[{i}].", found)
        else:
            items = (
                [(f"{prefix}{fd.name}", value)]
                if kind == _JSON_ONE
                else [(f"{prefix}{fd.name}[{i}]", item) for i, item in enumerate(value)]
            )
            for where, item in items:
                problem = _json_problem(item)
                if problem:
                    _add(found, where, problem)


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
            problem = json_text_problem(key)
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
            return json_text_problem(value.string_value)
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
