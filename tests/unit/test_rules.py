from __future__ import annotations

import itertools
import math
import operator
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.models import (
    ExitAction,
    ExitDetectionSettings,
    GeofenceDraft,
    Job,
    ManualBreakType,
    TimeClock,
    TreeSize,
    measure_tree,
)
from geopunch.domain.rules import (
    DEFAULT_FENCE_SIZE_M,
    MAX_ENTITY_ID,
    Collector,
    check_user_ids,
    is_valid_timezone,
    parse_dates,
    validate_geofences,
    validate_time_clock,
)

TC = TimeClock(
    id=1,
    name="clock",
    timezone="Europe/Berlin",
    jobs=(Job("a"), Job("b"), Job("a1", parent_id="a"), Job("a1x", parent_id="a1")),
)


def ids() -> itertools.count[int]:
    return itertools.count()


def draft(**kw: object) -> GeofenceDraft:
    base: dict[str, object] = {"name": "n", "address": "addr", "latitude": 1.0, "longitude": 2.0}
    base.update(kw)
    return GeofenceDraft(**base)  # type: ignore[arg-type]


def validate(*drafts: GeofenceDraft, tc: TimeClock = TC) -> list[object]:
    counter = ids()
    return list(validate_geofences(drafts, tc, lambda: f"f{next(counter)}"))


def reasons(exc: pytest.ExceptionInfo[DomainError]) -> set[tuple[str, ErrorCode]]:
    return {(v.field, v.reason) for v in exc.value.violations}


def test_defaults() -> None:
    (f,) = validate(draft())
    assert f.is_enabled is True  # type: ignore[attr-defined]
    assert f.fence_size_m == DEFAULT_FENCE_SIZE_M  # type: ignore[attr-defined]
    assert f.exit_action is ExitAction.NO_ACTION  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "size,ok", [(74, False), (75, True), (1524, True), (1525, False), (0, False)]
)
def test_fence_size_bounds(size: int, ok: bool) -> None:
    if ok:
        assert validate(draft(fence_size_m=size))
    else:
        with pytest.raises(DomainError) as exc:
            validate(draft(fence_size_m=size))
        assert reasons(exc) == {("geofences[0].fence_size", ErrorCode.INVALID_FENCE_SIZE)}


@pytest.mark.parametrize(
    "lat,lon,field",
    [
        (90.0000001, 0.0, "latitude"),
        (-91.0, 0.0, "latitude"),
        (0.0, 180.1, "longitude"),
        (math.nan, 0.0, "latitude"),
        (0.0, math.inf, "longitude"),
        (None, 0.0, "latitude"),
    ],
)
def test_bad_coordinates(lat: float | None, lon: float, field: str) -> None:
    with pytest.raises(DomainError) as exc:
        validate(draft(latitude=lat, longitude=lon))
    assert reasons(exc) == {(f"geofences[0].location.{field}", ErrorCode.INVALID_COORDINATES)}


@given(st.floats(-90, 90), st.floats(-180, 180))
def test_all_in_range_coordinates_pass(lat: float, lon: float) -> None:
    (f,) = validate(draft(latitude=lat, longitude=lon))
    assert (f.latitude, f.longitude) == (lat, lon)  # type: ignore[attr-defined]


def test_job_rules() -> None:
    assert validate(draft(job_ids=("a1x", "b")))
    with pytest.raises(DomainError) as exc:
        validate(draft(job_ids=("zzz",)))
    assert exc.value.code is ErrorCode.JOBS_NOT_IN_TIME_CLOCK
    with pytest.raises(DomainError) as exc:
        validate(draft(job_ids=tuple(f"j{i}" for i in range(101))))
    assert exc.value.code is ErrorCode.TOO_MANY_JOB_IDS
    enforced = TimeClock(id=1, name="c", timezone="UTC", job_enforcement=True, jobs=(Job("a"),))
    with pytest.raises(DomainError) as exc:
        validate(draft(), tc=enforced)
    assert exc.value.code is ErrorCode.JOB_IDS_REQUIRED


def test_nothing_is_returned_when_one_draft_is_bad() -> None:
    with pytest.raises(DomainError) as exc:
        validate(draft(), draft(), draft(name=""), draft(exit_action="leave"))
    assert reasons(exc) == {
        ("geofences[2].name", ErrorCode.INVALID_NAME),
        ("geofences[3].on_geofence_exit_action", ErrorCode.INVALID_EXIT_ACTION),
    }


def test_too_many_and_none() -> None:
    with pytest.raises(DomainError) as exc:
        validate(*[draft()] * 1001)
    assert exc.value.code is ErrorCode.TOO_MANY_GEOFENCES
    with pytest.raises(DomainError) as exc:
        validate()
    assert exc.value.code is ErrorCode.INVALID_ARGUMENT


_EDGES = {
    "name": st.sampled_from(["n", "", " ", "\t", "x" * 255, "x" * 256, " y "]),
    "address": st.sampled_from(["a", "", "  ", "z" * 1000, "z" * 1001]),
    "latitude": st.one_of(
        st.none(),
        st.sampled_from([90.0, -90.0, 90.0000001, math.nan, math.inf, -math.inf, 0]),
        st.floats(-100, 100),
    ),
    "longitude": st.one_of(
        st.none(),
        st.sampled_from([180.0, -180.0, 180.1, math.nan, -math.inf, 0]),
        st.floats(-200, 200),
    ),
    "accuracy": st.one_of(st.none(), st.sampled_from([0.0, -0.0, -1.0, math.nan, math.inf, 5])),
    "fence_size_m": st.one_of(st.none(), st.sampled_from([74, 75, 150, 1524, 1525, 0, -1])),
    "job_ids": st.one_of(
        st.lists(st.sampled_from(["a", "b", "a1", "zzz", ""]), max_size=3).map(tuple),
        st.sampled_from([tuple(f"j{i}" for i in range(101)), ("a",) * 101]),
    ),
    "exit_action": st.sampled_from(["", *(a.value for a in ExitAction), "leave", "no_action"]),
    "is_enabled": st.sampled_from([None, True, False]),
}


#: A draft with one field at an edge (most drafts: so that a rule the fast
#: check gets wrong is not hidden behind another problem of the same draft),
#: or with several.
_CHANGES = st.one_of(
    st.sampled_from(sorted(_EDGES)).flatmap(lambda k: _EDGES[k].map(lambda v: {k: v})),
    st.fixed_dictionaries({}, optional=_EDGES),
)


@settings(max_examples=300)
@given(st.lists(_CHANGES, min_size=1, max_size=3), st.booleans())
def test_the_column_wise_check_and_the_walk_agree_on_every_draft(
    changes: list[dict[str, object]], enforce: bool
) -> None:
    """The fast check over all drafts passes exactly when walking each draft
    finds no problem, so that valid requests skip the walk without letting
    anything through it would refuse."""
    from geopunch.domain.rules import Collector, _all_usable, _geofence_problems

    # 101 jobs of the clock in one fence: only the count's limit refuses it.
    jobs = (*TC.jobs, *(Job(f"j{i}") for i in range(101)))
    tc = TimeClock(id=1, name="c", timezone="UTC", job_enforcement=enforce, jobs=jobs)
    drafts = [draft(**c) for c in changes]
    out = Collector()
    _geofence_problems(out, drafts, tc, "geofences")
    assert _all_usable(drafts, tc) == (not out.violations)
    if out.violations:
        with pytest.raises(DomainError) as exc:
            validate(*drafts, tc=tc)
        assert reasons(exc) == {(v.field, v.reason) for v in out.violations}
    else:
        assert len(validate(*drafts, tc=tc)) == len(drafts)


def test_descendants() -> None:
    assert TC.with_descendants(["a"]) == {"a", "a1", "a1x"}
    assert TC.with_descendants(["b"]) == {"b"}


def test_timezones() -> None:
    assert is_valid_timezone("America/New_York")
    assert is_valid_timezone("UTC")
    for bad in ("", "Mars/Olympus", "../etc/passwd", " UTC", "America/New York"):
        assert not is_valid_timezone(bad), bad
    # Files of the zone directory that are not zones of the tz database: a
    # leap-second copy (27 s off civil time), the POSIX copies, and the
    # machine's own alias, whose meaning changes with the machine.
    for not_a_name in ("right/UTC", "posix/Europe/London", "posixrules", "localtime"):
        assert not is_valid_timezone(not_a_name), not_a_name
    for alias in ("US/Eastern", "Etc/GMT+5", "EST"):  # the database's own links
        assert is_valid_timezone(alias), alias


def tc_paths(tc: TimeClock) -> list[str]:
    return [f"time_clock.jobs[{i}]" for i in range(len(tc.jobs))]


@pytest.mark.parametrize(
    "change,field,reason",
    [
        ({"timezone": "Nowhere/City"}, "time_clock.timezone", ErrorCode.INVALID_TIMEZONE),
        ({"name": ""}, "time_clock.name", ErrorCode.INVALID_ARGUMENT),
        ({"jobs": (Job("a"), Job("a"))}, "time_clock.jobs[1].id", ErrorCode.INVALID_ARGUMENT),
        ({"jobs": (Job(""),)}, "time_clock.jobs[0].id", ErrorCode.INVALID_ARGUMENT),
        (
            {"accuracy_tolerance_m": -1.0},
            "time_clock.accuracy_tolerance_m",
            ErrorCode.INVALID_ARGUMENT,
        ),
        (
            {"accuracy_tolerance_m": math.nan},
            "time_clock.accuracy_tolerance_m",
            ErrorCode.INVALID_ARGUMENT,
        ),
        (
            {"manual_break_types": (ManualBreakType("b", "Lunch", True, 0),)},
            "time_clock.manual_break_types[0].min_duration_seconds",
            ErrorCode.INVALID_ARGUMENT,
        ),
        (
            {"manual_break_types": (ManualBreakType("b", "L"), ManualBreakType("b", "R"))},
            "time_clock.manual_break_types[1].id",
            ErrorCode.INVALID_ARGUMENT,
        ),
        (
            {"exit_detection": ExitDetectionSettings(high_accuracy_max_m=400)},
            "time_clock.exit_detection.high_accuracy_max_m",
            ErrorCode.INVALID_ARGUMENT,
        ),
        (
            {"exit_detection": ExitDetectionSettings(buffer_low_accuracy_m=math.inf)},
            "time_clock.exit_detection.buffer_low_accuracy_m",
            ErrorCode.INVALID_ARGUMENT,
        ),
        ({"job_enforcement": True, "jobs": ()}, "time_clock.jobs", ErrorCode.INVALID_ARGUMENT),
        ({"user_ids": frozenset({-5})}, "time_clock.user_ids", ErrorCode.INVALID_ARGUMENT),
        ({"user_ids": frozenset({3, 0})}, "time_clock.user_ids", ErrorCode.INVALID_ARGUMENT),
        ({"user_ids": frozenset({2**53})}, "time_clock.user_ids", ErrorCode.INVALID_ARGUMENT),
    ],
)
def test_time_clock_settings(change: dict[str, object], field: str, reason: ErrorCode) -> None:
    tc = replace(TC, **change)  # type: ignore[arg-type]
    with pytest.raises(DomainError) as exc:
        validate_time_clock(tc, tc_paths(tc))
    assert (field, reason) in reasons(exc)


def test_valid_time_clock_passes() -> None:
    validate_time_clock(TC, tc_paths(TC))
    validate_time_clock(replace(TC, user_ids=frozenset({1, MAX_ENTITY_ID})), tc_paths(TC))


def test_out_of_range_user_ids_are_named_in_order() -> None:
    out = Collector()
    check_user_ids(out, "user_ids", [7, 2**63 - 1, -3, 0, *range(-10, -4), 2**53])
    [(path, reason, text)] = [(v.field, v.reason, v.description) for v in out.violations]
    assert (path, reason) == ("user_ids", ErrorCode.INVALID_ARGUMENT)
    assert text.endswith(f"up to {MAX_ENTITY_ID}: -10, -9, -8, -7, -6 and 5 more"), text
    out = Collector()
    check_user_ids(out, "user_ids", [2**53, 4])
    assert out.violations[0].description.endswith(": 9007199254740992")


def test_dates() -> None:
    assert [d.isoformat() for d in parse_dates(["2026-01-31"])] == ["2026-01-31"]
    for bad in (["2026-02-30"], ["26-1-1"], [], ["2026-01-01T00:00"]):
        with pytest.raises(DomainError):
            parse_dates(bad)


def test_a_forged_page_token_is_refused_as_any_foreign_one() -> None:
    """A token's digest is of the query alone, so a client can make one that
    matches; what it holds must still be what the store can take (an int64
    start that is not a bool, a short ASCII id), else it was a 500."""
    import base64
    import json

    from geopunch.domain.timesheets import ListQuery, check_list_query, next_page_token

    q = ListQuery(7, 0, 86_400)
    good = next_page_token(q, 5, "a1")
    assert check_list_query(ListQuery(7, 0, 86_400, page_token=good))[1] is not None
    digest = json.loads(base64.urlsafe_b64decode(good + "==="))[2]
    for start, activity_id in [
        (10**30, "a"),
        (2**63, "a"),
        (-(2**63) - 1, "a"),
        (True, "a"),
        (5.0, "a"),
        (5, "a\x00"),
        (5, "\ud800"),
        (5, "\u00e9"),
        (5, "x" * 129),
        (5, 7),
    ]:
        body = json.dumps([start, activity_id, digest]).encode("utf-8", "surrogatepass")
        token = base64.urlsafe_b64encode(body).decode().rstrip("=")
        with pytest.raises(DomainError) as caught:
            check_list_query(ListQuery(7, 0, 86_400, page_token=token))
        assert [v.field for v in caught.value.violations] == ["page_token"], (start, activity_id)


def test_measure_tree_is_exact_within_the_limit_and_stops_past_it() -> None:
    class Node:
        reads = 0

        def __init__(self, kids: list[Node]) -> None:
            self._kids = kids

        @property
        def kids(self) -> list[Node]:
            Node.reads += 1
            return self._kids

    def tree(width: int, depth: int) -> list[Node]:
        return [Node(tree(width, depth - 1) if depth > 1 else []) for _ in range(width)]

    kids = operator.attrgetter("kids")
    assert measure_tree([], kids, 10) == TreeSize(0, True, 0)
    assert measure_tree(tree(3, 3), kids, 39) == TreeSize(39, True, 3)  # 3 + 9 + 27
    # Past the limit on the last level, with nothing below it: still exact.
    assert measure_tree(tree(3, 3), kids, 38) == TreeSize(39, True, 3)
    short = measure_tree(tree(3, 3), kids, 20)
    assert 20 < short.count < 39 and not short.whole
    # A flat list a little too long is told its exact length.
    assert measure_tree(tree(1001, 1), kids, 1000) == TreeSize(1001, True, 1)
    # A million leaves under a thousand nodes: refused after reading the
    # children of at most the limit's worth of nodes, and said to hold at
    # least what was counted.
    wide = [Node([Node([]) for _ in range(1000)]) for _ in range(1000)]
    Node.reads = 0
    size = measure_tree(wide, kids, 1000)
    assert size.count > 1000 and not size.whole
    assert Node.reads <= 1000
    # A chain as long as the limit, far deeper than Python recurses.
    chain: list[Node] = []
    for _ in range(5000):
        chain = [Node(chain)]
    assert measure_tree(chain, kids, 5000) == TreeSize(5000, True, 5000)
