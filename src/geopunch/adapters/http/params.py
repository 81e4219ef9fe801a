"""What a URL carries beside the body, held to the rules a body is: its
integers and booleans spelled one way, and its query holding only what the
call takes."""

import re
from typing import Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from geopunch.adapters.spelling import meant
from geopunch.domain.errors import DomainError, ErrorCode, FieldViolation

#: An integer as a URL spells it: decimal digits, no sign but a minus, no
#: point, separator or leading zero. pydantic's lax parsing took "1.0",
#: "+1", "01" and "1_0" too, so that /time-clocks/1.0 answered as 1.
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)")


def _decimal(value: Any) -> Any:
    if isinstance(value, str) and not _DECIMAL.fullmatch(value):
        said = (
            "not an integer in decimal digits (such as 42: no plus, point, separator "
            "or leading zero)"
        )
        raise PydanticCustomError("int_parsing", said)
    return value


#: After a parameter's ``Path``, ``Query`` or ``Field``: placed before them,
#: pydantic documents their bounds as "ge"/"le" instead of JSON Schema's.
DECIMAL = BeforeValidator(_decimal)


def _boolean(value: Any) -> Any:
    if isinstance(value, str) and value not in ("true", "false"):
        raise PydanticCustomError("bool_parsing", "not a boolean: true or false")
    return value


#: After a query parameter's ``Query``: a boolean as JSON spells it.
#: pydantic's lax parsing took "1", "yes", "on", "t" and "FALSE" as well, so
#: that ?notifyUsers=no and ?notifyUsers=nope were told apart only by luck.
BOOLEAN = BeforeValidator(_boolean)


def query_problems(names: dict[str, bool], sent: list[tuple[str, str]]) -> list[FieldViolation]:
    """What is wrong with a request's query for an operation taking ``names``
    (name -> whether it takes a list): a name it does not take, or one
    value given more than once."""
    counts: dict[str, int] = {}
    for name, _ in sent:
        counts[name] = counts.get(name, 0) + 1
    listed = ", ".join(names) or "none"
    problems = []
    for name, count in counts.items():
        if name not in names:
            hint = meant(name, names)
            said = (
                f"not a query parameter of this call; it takes {listed}"
                if hint is None
                else f"not a query parameter of this call: did you mean {hint}? It takes {listed}"
            )
        elif count > 1 and not names[name]:
            said = f"given {count} times; it takes one value"
        else:
            continue
        problems.append(FieldViolation(name[:64], said, ErrorCode.INVALID_ARGUMENT, as_sent=True))
    return problems


#: What a call with a body does with keys the body does not take: nothing,
#: tell the caller in ``Warning`` headers (the default), or refuse the call.
#: Kubernetes' API server takes the same query parameter, with the same
#: values, for the same question.
FIELD_VALIDATION = "fieldValidation"
IGNORE, WARN, STRICT = "Ignore", "Warn", "Strict"
FIELD_VALIDATIONS = (IGNORE, WARN, STRICT)


def field_validation(sent: list[str]) -> str | None:
    """The mode a query's ``fieldValidation`` values ask for: the default
    for none, and None for one value that is not a mode
    (``field_validation_problem``) or for several (the query check's)."""
    if not sent:
        return WARN
    return sent[0] if len(sent) == 1 and sent[0] in FIELD_VALIDATIONS else None


def field_validation_problem(sent: list[str]) -> DomainError | None:
    """The refusal of one ``fieldValidation`` value that is not a mode."""
    if len(sent) != 1 or sent[0] in FIELD_VALIDATIONS:
        return None
    said = f"{sent[0][:32]!r} is not one of {', '.join(FIELD_VALIDATIONS)}"
    return DomainError.from_violations(
        [FieldViolation(FIELD_VALIDATION, said, ErrorCode.INVALID_ARGUMENT)], "the query"
    )
