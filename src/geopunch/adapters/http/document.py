"""The OpenAPI document as FastAPI builds it, finished: what FastAPI
cannot say of geopunch's routes, said once for all of them."""

from typing import Any

from pydantic import BaseModel

from geopunch.adapters.http import shapes
from geopunch.adapters.http.bodies import ErrorBody
from geopunch.adapters.http.params import FIELD_VALIDATION, FIELD_VALIDATIONS, WARN


def finish(document: dict[str, Any]) -> dict[str, Any]:
    """Exact integer bounds, no 422, links from what a call creates, and
    ``fieldValidation`` on every call that takes a body."""
    return _with_field_validation(
        _with_links(_without_422(_exact_integer_bounds(_with_error_body(document))))
    )


_SCHEMAS = "#/components/schemas/"


def refusal(what: str) -> dict[str, Any]:
    """The OpenAPI entry of a refusal that answers with ``ErrorBody``.

    A reference to the schema, which ``finish`` adds, rather than FastAPI's
    ``model``: for a model FastAPI builds a pydantic ``TypeAdapter`` per
    route and status, most of the app's build at every start, for a
    document built only when asked for."""
    schema = {"$ref": f"{_SCHEMAS}{ErrorBody.__name__}"}
    return {"description": what, "content": {"application/json": {"schema": schema}}}


def _with_error_body(document: dict[str, Any]) -> dict[str, Any]:
    """``ErrorBody`` and the schemas it refers to, among the components."""
    schema = ErrorBody.model_json_schema(ref_template=_SCHEMAS + "{model}", mode="serialization")
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(schema.pop("$defs", {}))
    # Written as FastAPI writes every other schema, which leaves out nulls.
    for field in schema["properties"].values():
        if "default" in field and field["default"] is None:
            del field["default"]
    schemas[ErrorBody.__name__] = schema
    return document


def _with_field_validation(document: dict[str, Any]) -> dict[str, Any]:
    """The query parameter that says what a call does with keys its body
    does not take (the app reads it where it decodes bodies), and the
    header its answers name them in."""
    parameter = {
        "name": FIELD_VALIDATION,
        "in": "query",
        "required": False,
        "description": (
            "What to do with keys the body does not take: Ignore them, Warn (each named "
            "in a Warning header of the answer), or refuse the call (Strict, 400)."
        ),
        "schema": {"type": "string", "enum": list(FIELD_VALIDATIONS), "default": WARN},
    }
    warning = {
        "description": (
            "One for each key of the body the call does not take (unless fieldValidation "
            'is Ignore): 299 - "unknown field \\"jobs[0].nme\\""'
        ),
        "schema": {"type": "string"},
    }
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if "requestBody" in operation:
                operation.setdefault("parameters", []).append(dict(parameter))
                for answer in operation.get("responses", {}).values():
                    answer.setdefault("headers", {})["Warning"] = dict(warning)
    return document


_INT64 = (-(2**63), 2**63 - 1)


def query_parameters(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, bool]]:
    """Each operation's query parameters as the document lists them, by
    method and path template: name -> whether it takes a list (repeated)."""
    found: dict[tuple[str, str], dict[str, bool]] = {}
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            found[method.upper(), path] = {
                p["name"]: p.get("schema", {}).get("type") == "array"
                for p in operation.get("parameters", ())
                if p.get("in") == "query"
            }
    return found


def ok(shape: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entry of a route's answer: ``shape`` in the envelope."""
    return {200: {"model": shapes.Answer[shape], "description": "done"}}  # type: ignore[valid-type]


def _without_422(document: dict[str, Any]) -> dict[str, Any]:
    """The document without FastAPI's 422: geopunch refuses a body or a
    parameter the framework could not take with 400 and its own error body
    (``bad_body``), as the spec's errors are."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


_CLOCK = "/geopunch/v1/time-clocks/{timeClockId}"
_SPEC_CLOCK = "/time-clock/v1/time-clocks/{timeClockId}"
_HOOK = "/webhooks/v1/subscriptions/{subscriptionId}"
_NEW_CLOCK = {"timeClockId": "$response.body#/data/id"}
_SAME_CLOCK = {"timeClockId": "$request.path.timeClockId"}
#: What a created resource's answer leads to (OpenAPI links): the routes
#: that take its id, with where each parameter comes from. A client reads
#: how the API's calls chain; a fuzzer chains them (create, read, change,
#: delete) rather than aiming at random ids.
_LINKS: dict[tuple[str, str], list[tuple[str, str, dict[str, str]]]] = {
    ("post", "/geopunch/v1/time-clocks"): [
        (method, path, _NEW_CLOCK)
        for method, path in (
            ("get", _CLOCK),
            ("put", _CLOCK),
            ("post", f"{_CLOCK}/validate-punch"),
            ("post", f"{_CLOCK}/check-locations"),
            ("post", f"{_SPEC_CLOCK}/clock-in"),
            ("post", f"{_SPEC_CLOCK}/clock-out"),
            ("get", f"{_SPEC_CLOCK}/manual-breaks"),
            ("get", f"{_SPEC_CLOCK}/geofences"),
            ("post", f"{_SPEC_CLOCK}/geofences"),
            ("post", f"{_SPEC_CLOCK}/time-activities"),
            ("get", f"{_SPEC_CLOCK}/time-activities"),
            ("get", f"{_SPEC_CLOCK}/user-statuses"),
        )
    ],
    ("post", "/geopunch/v1/schedulers"): [
        (method, path, {"schedulerId": "$response.body#/data/id"})
        for method, path in (
            ("get", "/geopunch/v1/schedulers/{schedulerId}"),
            ("put", "/geopunch/v1/schedulers/{schedulerId}"),
            ("post", "/scheduler/v1/schedulers/{schedulerId}/shifts"),
            ("get", "/scheduler/v1/schedulers/{schedulerId}/shifts"),
        )
    ],
    ("post", f"{_SPEC_CLOCK}/geofences"): [
        (
            method,
            f"{_SPEC_CLOCK}/geofences/{{fenceId}}",
            {**_SAME_CLOCK, "fenceId": "$response.body#/data/geofences/0/fenceId"},
        )
        for method in ("get", "delete")
    ],
    ("post", f"{_SPEC_CLOCK}/time-activities"): [
        (
            "put",
            f"{_SPEC_CLOCK}/time-activities/{{activityId}}",
            {**_SAME_CLOCK, "activityId": "$response.body#/data/timeActivities/0/id"},
        ),
        (
            "delete",
            f"{_SPEC_CLOCK}/time-activities/{{activityId}}",
            {
                **_SAME_CLOCK,
                "activityId": "$response.body#/data/timeActivities/0/id",
                "modifiedAt": "$response.body#/data/timeActivities/0/modifiedAt",
            },
        ),
    ],
    ("post", "/geopunch/v1/api-keys"): [
        ("post", "/geopunch/v1/api-keys/{keyId}/rotate", {"keyId": "$response.body#/data/id"}),
        ("delete", "/geopunch/v1/api-keys/{keyId}", {"keyId": "$response.body#/data/id"}),
    ],
    ("post", "/webhooks/v1/subscriptions"): [
        (method, path, {"subscriptionId": "$response.body#/data/id"})
        for method, path in (
            ("get", _HOOK),
            ("patch", _HOOK),
            ("delete", _HOOK),
            ("get", f"{_HOOK}/deliveries"),
            ("post", f"{_HOOK}/replay"),
        )
    ],
}


def _with_links(document: dict[str, Any]) -> dict[str, Any]:
    """The document with ``_LINKS`` on each creating route's success."""
    paths = document["paths"]
    for (method, path), targets in _LINKS.items():
        links = {}
        for to_method, to_path, parameters in targets:
            operation_id = paths[to_path][to_method]["operationId"]
            links[operation_id] = {"operationId": operation_id, "parameters": parameters}
        paths[path][method]["responses"]["200"]["links"] = links
    return document


def _exact_integer_bounds(node: Any) -> Any:
    """The document with an integer's ``minimum`` and ``maximum`` as integers.

    FastAPI's OpenAPI model holds every bound as a float, which turns
    2**63 - 1 into 9.223372036854776e+18 (2**63, out of range) and 2**31 - 1
    into 2147483647.0. Every integer geopunch takes lies within int64, so a
    bound rounded past it is int64's own.
    """
    if isinstance(node, list):
        return [_exact_integer_bounds(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _exact_integer_bounds(value) for key, value in node.items()}
    if out.get("type") == "integer":
        for key in ("minimum", "maximum"):
            if isinstance(out.get(key), float):
                out[key] = min(max(int(out[key]), _INT64[0]), _INT64[1])
    return out
