"""schemathesis against the served OpenAPI document: generated calls of every
operation (valid and invalid ones) on a server of its own, none of which may
answer a server error or an answer the document does not describe, and every
invalid one must be refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.result import Ok

import tests.schemathesis_hooks  # noqa: F401 (registers the zones' format)
from tests.conftest import API_KEY, ServerProcess


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # A store of its own: generated calls replace and create time clocks at will.
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    srv = ServerProcess(db_url=f"sqlite:///{tmp / 'fuzz.db'}")
    srv.start(tmp)
    # A time clock and a scheduler that generated calls reach (see _pinned):
    # with random ids, nearly every call of theirs was answered 404.
    headers = {"X-API-KEY": API_KEY}
    with httpx.Client(base_url=f"http://{srv.http_address}", headers=headers) as http:
        clock = {
            "id": SEEDED,
            "name": "fuzz",
            "timezone": "America/New_York",
            "jobs": [{"id": "0", "name": "a"}, {"id": "job-a", "name": "A"}],
            "userIds": [SEEDED, SEEDED + 1],
            "manualBreakTypes": [{"id": "0", "name": "rest"}],
        }
        assert http.post("/geopunch/v1/time-clocks", json=clock).status_code == 200
        scheduler = {**clock, "timezone": "UTC"}
        del scheduler["manualBreakTypes"]
        assert http.post("/geopunch/v1/schedulers", json=scheduler).status_code == 200
    yield srv
    srv.terminate()


#: The id of the seeded time clock, scheduler and first user.
SEEDED = 1


def _pinned(case: schemathesis.Case[Any]) -> None:
    """A generated call aimed at the seeded time clock, scheduler and user
    wherever its path names one by a valid id, so that it reaches the rules
    rather than a 404; an invalid id (a string, zero, too large) is kept, as
    the refusal it tests."""
    for name in ("timeClockId", "schedulerId", "userId"):
        value = (case.path_parameters or {}).get(name)
        if type(value) is int and 0 < value < 2**53:
            case.path_parameters[name] = SEEDED


def test_no_call_breaks_the_server_or_the_document(fuzz_server: ServerProcess) -> None:
    base = f"http://{fuzz_server.http_address}"
    # The event stream never ends by itself; its own tests read it.
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json").exclude(
        path="/geopunch/v1/events"
    )
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # an operation the document cannot describe
        operations.append(result.ok())
    assert len(operations) >= 25, [op.label for op in operations]
    failures = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=20,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: schemathesis.Case[Any]) -> None:
            _pinned(case)
            case.call_and_validate(
                base_url=base,
                headers={"X-API-KEY": API_KEY},
                # A body the document allows may still break a rule of the
                # service (an unknown user, a bad zone): a 400 is its answer.
                excluded_checks=[positive_data_acceptance],
            )

        try:
            run()
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}"[:2000])
    assert not failures, "\n\n".join(failures)


#: A refusal schemathesis does not count as one by default: a list of ids a
#: URL cannot hold (the document bounds a list by gRPC's limit) is 414.
_CLI_CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 414, 415, 422, 428, 429, 431]
"""


def test_call_sequences_break_nothing(fuzz_server: ServerProcess, tmp_path: Path) -> None:
    """The stateful phase: calls chained along the document's links (a time
    clock or scheduler created, then read, replaced, punched at, fenced; a
    key made, rotated, revoked), each answer checked as above. Run by
    schemathesis's own engine (its CLI): in a pytest state machine, rules
    that depend on what a mutable server answered made Hypothesis report
    its data generation as flaky."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(_CLI_CONFIG)
    run = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
            f"http://{fuzz_server.http_address}/openapi.json",
            "--header", f"X-API-KEY: {API_KEY}",
            "--exclude-path", "/geopunch/v1/events",
            "--checks", "all", "--exclude-checks", "positive_data_acceptance",
            "--phases", "stateful", "--max-examples", "100", "--seed", "1",
            "--suppress-health-check", "all", "--workers", "1",
        ],
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
            ),
            "NO_COLOR": "1",
        },
        cwd=tmp_path,  # where the CLI leaves its own files
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    # The links do chain: transitions from a created resource were taken.
    covered = re.search(r"API Links:\s+(\d+) covered", run.stdout)
    assert covered is not None and int(covered.group(1)) >= 5, run.stdout[-4000:]


def _unbounded_integers(document: dict[str, Any]) -> list[str]:
    """Every integer a request may carry (parameters and bodies, nested
    models and lists included) whose schema lacks an integer ``minimum`` or
    ``maximum`` (a float one is rounded: 2**63 - 1 became 2**63), or states a
    bound under a key JSON Schema does not know."""
    components = document["components"]["schemas"]
    found: list[str] = []

    def walk(schema: Any, where: str, seen: frozenset[str]) -> None:
        if not isinstance(schema, dict):
            return
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            if name not in seen:
                walk(components[name], f"{where}->{name}", seen | {name})
            return
        if schema.get("type") == "integer" and (
            not isinstance(schema.get("minimum"), int)
            or not isinstance(schema.get("maximum"), int)
            or {"ge", "le"} & schema.keys()
        ):
            found.append(f"{where}: {schema}")
        for key in ("items", "additionalProperties"):
            walk(schema.get(key), f"{where}[]", seen)
        for key in ("anyOf", "oneOf", "allOf"):
            for choice in schema.get(key, []):
                walk(choice, where, seen)
        for name, sub in schema.get("properties", {}).items():
            walk(sub, f"{where}.{name}", seen)

    for path, operations in document["paths"].items():
        for method, op in operations.items():
            for p in op.get("parameters", []):
                walk(p.get("schema"), f"{method} {path} {p['name']}", frozenset())
            for content in op.get("requestBody", {}).get("content", {}).values():
                walk(content.get("schema"), f"{method} {path} body", frozenset())
    return found


def test_every_integer_a_request_carries_is_bounded_in_the_document(
    fuzz_server: ServerProcess,
) -> None:
    """Unbounded integers (a list of user ids, an integer latitude) let 10**30
    through to the store's driver, which failed as a 500; and a bound the
    document does not state is one schemathesis never probes."""
    document = httpx.get(f"http://{fuzz_server.http_address}/openapi.json").json()
    assert not _unbounded_integers(document), "\n".join(_unbounded_integers(document))
    # The walk does reach the lists of ids it is there for.
    body = document["components"]["schemas"]["TimeClockIn"]["properties"]["userIds"]
    assert body["items"] == {"type": "integer", "minimum": 1, "maximum": 2**53 - 1}
