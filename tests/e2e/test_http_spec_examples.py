"""Every curl example of the spec, read from ../shared/spec at test time and
sent as written to a real server's HTTP listener.

Only what cannot hold here is replaced: the host, the key (each example runs
in an account of its own, so examples do not disturb each other and ids such
as time clock 12345 stay as written), ids the server assigns (a geofence's,
a scheduler shift's) and fixed timestamps that the 12-hour window has made
stale, which move to now keeping their spacing within a document. The answer
must have the documented status and every key of the documented answer of
the same form, with the documented JSON type; keys the spec does not show are
only geopunch's documented additions.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.e2e.test_accounts import provision
from tests.helpers import AnswersMatchDocument

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec"
HOST = "https://api.connecteam.com"
USERS = [9170357, 9170358, 9170359]
BREAK_TYPE = "8b8a161e-dfb5-42ac-bbf0-0448fc0c0c82"
SCHEDULER_JOB = "d4ad7232-576f-2ff6-c57d-8240f1089b00"
#: Keys geopunch answers beyond the spec's samples (docs/http.md lists them).
ADDITIONS = {
    "geofenceId",
    "accuracy",
    "startTimestamp",
    "endTimestamp",
    "manualBreakId",
    # Shown in clock-in's sample; every shift carries it, also in clock-out's answer.
    "schedulerShiftId",
}
#: Keys the spec's samples show only when the request carried the value (a
#: punch's location): absent otherwise, as in the clock-out sample's start.
CONDITIONAL = {"locationData"}
#: Keys that are null where the spec's sample shows a value, when there is
#: none: a shift made by an API key has no creating user, one with only a
#: job has no title.
NULLABLE = {"createdBy", "title", "jobId"}

pytestmark = pytest.mark.skipif(not SPEC.is_dir(), reason=f"the spec is not at {SPEC}")


@dataclass
class Example:
    document: str
    index: int
    method: str
    url: str
    body: str
    #: Where the example is in its document.
    at: int


_OPTION = re.compile(r"\s*(?:\\\s*)?--(\w+)\s+(?:'([^']*)'|(\S+))")


def examples() -> list[Example]:
    found = []
    for path in sorted(SPEC.glob("*.txt")) if SPEC.is_dir() else []:
        text = path.read_text()
        for n, start in enumerate(m.end() for m in re.finditer(r"curl(?= --request)", text)):
            options: dict[str, str] = {}
            pos = start
            while m := _OPTION.match(text, pos):
                options.setdefault(m.group(1), m.group(2) if m.group(2) is not None else m.group(3))
                pos = m.end()
            found.append(
                Example(
                    path.name, n, options["request"], options["url"], options.get("data", ""), start
                )
            )
    return found


def documented_answers(ex: Example) -> list[Any]:
    """The success answers the example's document shows (objects with a
    requestId), the ones after the example first: an example's own answer
    follows it."""
    text = (SPEC / ex.document).read_text()
    decoder = json.JSONDecoder()
    found = [
        (m.start(), decoder.raw_decode(text, m.start())[0])
        for m in re.finditer(r'\{\s*"requestId"', text)
    ]
    return [a for at, a in found if at > ex.at] + [a for at, a in found if at <= ex.at]


def _shift_times(body: str, delta: int) -> str:
    return re.sub(
        r'("timestamp":\s*)(\d+)', lambda m: f"{m.group(1)}{int(m.group(2)) + delta}", body
    )


def _conforms(ours: Any, doc: Any, where: str, problems: list[str]) -> None:
    if doc is None or (ours is None and where.rpartition(".")[2] in NULLABLE):
        return  # a documented null: the key must be there, of any type
    if isinstance(doc, dict):
        if not isinstance(ours, dict):
            problems.append(f"{where}: {ours!r} is not an object")
            return
        for key, value in doc.items():
            if key not in ours and key not in CONDITIONAL:
                problems.append(f"{where}.{key} is missing")
            elif key in ours:
                _conforms(ours[key], value, f"{where}.{key}", problems)
        for key in set(ours) - set(doc) - ADDITIONS - CONDITIONAL:
            problems.append(f"{where}.{key} is not in the spec's answer")
    elif isinstance(doc, list):
        if not isinstance(ours, list):
            problems.append(f"{where}: {ours!r} is not a list")
        elif doc and ours:
            for i, item in enumerate(ours):
                _conforms(item, doc[0], f"{where}[{i}]", problems)
    elif isinstance(doc, bool) or isinstance(ours, bool):
        if type(ours) is not type(doc):
            problems.append(f"{where}: {ours!r} where the spec has {doc!r}")
    elif isinstance(doc, int) and not isinstance(ours, int):
        problems.append(f"{where}: {ours!r} is not an integer")
    elif isinstance(doc, float) and not isinstance(ours, int | float):
        problems.append(f"{where}: {ours!r} is not a number")
    elif isinstance(doc, str) and not isinstance(ours, str):
        problems.append(f"{where}: {ours!r} is not a string")


def _matches_a_documented_form(answer: Any, documented: list[Any]) -> list[str]:
    """Problems against the first documented answer whose ``data`` has the same keys."""
    same = [d for d in documented if set(d["data"]) == set(answer["data"])]
    if not same:
        return [f"no documented answer has the keys {sorted(answer['data'])}"]
    problems: list[str] = []
    _conforms(answer, same[0], "", problems)
    return problems


@pytest.fixture(scope="module")
def spec_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """A server and one admin key per example, each in an account of its own."""
    tmp = tmp_path_factory.mktemp("spec-examples")
    url = f"sqlite:///{tmp / 'spec.db'}"
    names = [f"example-{i}" for i in range(len(examples()))]
    tenants = provision(url, *names)
    srv = ServerProcess(db_url=url)
    srv.start(tmp)
    try:
        yield f"http://{srv.http_address}", [tenants[n].keys["all"] for n in names]
    finally:
        srv.terminate()


@functools.cache
def _answers_match(base: str) -> AnswersMatchDocument:
    """One reading of the server's document for every example."""
    return AnswersMatchDocument(base)


def _prepare(http: httpx.Client, ex: Example, body: dict[str, Any] | list[Any]) -> str:
    """The account's world as the examples assume it; returns the URL to call."""
    named = {"job-123", "job-456"}
    for fence in body.get("geofences", []) if isinstance(body, dict) else []:
        named.update(fence.get("jobIds", []))
    jobs = [{"id": j, "name": j} for j in sorted(named)]
    tc = http.post(
        "/geopunch/v1/time-clocks",
        json={
            "id": 12345,
            "name": "Main",
            "timezone": "America/New_York",
            "userIds": USERS,
            "jobs": jobs,
            "manualBreaksEnabled": True,
            "manualBreakTypes": [{"id": BREAK_TYPE, "name": "Lunch"}],
        },
    )
    assert tc.status_code == 200, tc.text
    s = http.post(
        "/geopunch/v1/schedulers",
        json={
            "id": 9454799,
            "name": "Main",
            "timezone": "America/New_York",
            "userIds": USERS,
            "jobs": [{"id": SCHEDULER_JOB, "name": "Floor"}],
            "multiUserShifts": True,
        },
    )
    assert s.status_code == 200, s.text
    url = ex.url.replace(HOST, "")
    punch = "/time-clock/v1/time-clocks/12345"
    ts = body.get("timestamp") if isinstance(body, dict) else None
    earlier = {"timestamp": (ts or int(time.time())) - 1800}
    if url.endswith("/manual-breaks/clock-out"):
        r = http.post(
            f"{punch}/manual-breaks/{BREAK_TYPE}/clock-in", json={"userId": USERS[0], **earlier}
        )
        assert r.status_code == 200, r.text
    elif url.endswith("/clock-out"):
        r = http.post(f"{punch}/clock-in", json={"userId": USERS[0], **earlier})
        assert r.status_code == 200, r.text
    elif "geofences" in url and ex.method in {"GET", "DELETE"}:
        made = http.post(
            f"{punch}/geofences",
            json={
                "geofences": [
                    {
                        "name": "Site",
                        "location": {
                            "address": "1 Main St",
                            "latitude": "40.7128",
                            "longitude": "-74.0060",
                        },
                    }
                ]
            },
        )
        assert made.status_code == 200, made.text
        url = url.replace("fence-abc123", made.json()["data"]["geofences"][0]["fenceId"])
    return url


@pytest.mark.parametrize("ex", examples(), ids=lambda e: f"{e.document}-{e.index}")
def test_each_curl_example_answers_as_documented(
    ex: Example, spec_world: tuple[str, list[str]]
) -> None:
    base, keys = spec_world
    with httpx.Client(
        base_url=base,
        headers={"X-API-KEY": keys[examples().index(ex)]},
        timeout=30,
        event_hooks={"response": [_answers_match(base)]},
    ) as http:
        stamps = [
            int(t)
            for e in examples()
            if e.document == ex.document
            for t in re.findall(r'"timestamp":\s*(\d+)', e.body)
        ]
        delta = int(time.time()) - 120 - max(stamps) if stamps else 0
        raw = _shift_times(ex.body, delta) if ex.body else ""
        body = json.loads(raw) if raw else {}
        url = _prepare(http, ex, body)
        if "schedulerShiftId" in body:
            day = int(time.time()) // 86400 * 86400
            made = http.post(
                "/scheduler/v1/schedulers/9454799/shifts",
                json=[
                    {
                        "startTime": day,
                        "endTime": day + 3600,
                        "title": "t",
                        "isPublished": True,
                        "assignedUserIds": [body["userId"]],
                    }
                ],
            )
            assert made.status_code == 200, made.text
            raw = raw.replace(body["schedulerShiftId"], made.json()["data"]["shifts"][0]["id"])
        r = http.request(
            ex.method,
            url,
            content=raw or None,
            headers={"Content-Type": "application/json"} if raw else {},
        )
    assert r.status_code == 200, (ex.url, raw, r.text)
    # Every key the spec sends is one geopunch takes: none is named unknown.
    assert r.headers.get_list("warning") == [], (ex.url, raw)
    answer = r.json()
    assert answer["requestId"] == r.headers["X-Request-ID"]
    problems = _matches_a_documented_form(answer, documented_answers(ex))
    assert not problems, (ex.url, raw, problems, answer)


def test_every_example_was_found() -> None:
    found = examples()
    by_doc = {d: sum(e.document == d for e in found) for d in {e.document for e in found}}
    # Counted by hand from the documents; a parser that misses one fails here.
    assert by_doc == {
        "time-clock-clocking.txt": 8,
        "manual-breaks.txt": 7,
        "geofences.txt": 4,
        "scheduler-create-shifts.txt": 10,
    }, by_doc
