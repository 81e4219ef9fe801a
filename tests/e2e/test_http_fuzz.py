"""schemathesis against the served OpenAPI document: generated calls of every
operation (valid and invalid ones) on a server of its own, none of which may
answer a server error or an answer the document does not describe, and every
invalid one must be refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.result import Ok

from tests.conftest import API_KEY, ServerProcess


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # A store of its own: generated calls replace and create time clocks at will.
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    srv = ServerProcess(db_url=f"sqlite:///{tmp / 'fuzz.db'}")
    srv.start(tmp)
    yield srv
    srv.terminate()


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
