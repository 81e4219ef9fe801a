"""Positional constructors for the frozen domain dataclasses read in bulk.

A frozen dataclass's ``__init__`` sets each field through
``object.__setattr__``, about 110 ns a field: building the five objects of
one listed activity (itself, two points, two locations) cost as much as
reading its row from SQLite (bench/README.md, ListTimeActivities). The
constructor made here sets the fields through the slots' own descriptors,
which the frozen ``__setattr__`` does not guard, in half the time. The
object is the same: equal, hashable and frozen as one made by ``__init__``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def positional_builder(cls: type[T]) -> Callable[..., T]:
    """A function taking every field of ``cls`` (a frozen dataclass with
    slots and no ``__post_init__``) in declaration order, defaults included."""
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    if not (params.frozen and "__slots__" in cls.__dict__) or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass without __post_init__")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    scope.update({f"_set_{n}": cls.__dict__[n].__set__ for n in names})
    # Generated, as dataclasses generates ``__init__``: one call per field
    # without a loop; the names are the dataclass's own identifiers.
    lines = [f"def build({', '.join(names)}):", "    o = _new(_cls)"]
    lines += [f"    _set_{n}(o, {n})" for n in names]
    lines.append("    return o")
    exec("\n".join(lines), scope)
    built: Callable[..., T] = scope["build"]
    return built
