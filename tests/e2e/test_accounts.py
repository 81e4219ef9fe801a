"""Accounts and scoped keys against a real server (``--processes 2``, SQLite
and PostgreSQL): another account's resources answer exactly as missing ones
and are left untouched, each scope opens only its RPCs, and keys made by the
CLI or the admin RPCs work, rotate and stop working on every worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from geopunch.adapters.db.fence_rows import ArrowFenceReader
from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine, migrate
from geopunch.adapters.db.tables import metadata
from geopunch.adapters.grpc.auth import SCOPES
from geopunch.domain.accounts import Scope
from geopunch.domain.models import ExitAction, Geofence, TimeClock
from geopunch.service import accounts
from geopunch.v1 import (
    admin_pb2,
    common_pb2,
    geofences_pb2,
    location_pb2,
    scheduler_pb2,
    timeclock_pb2,
    webhooks_pb2,
)
from tests import forked_server, protobuf_strategies
from tests.conftest import Client, ServerProcess, make_scheduler, make_time_clock
from tests.e2e.test_locations_api import add_fence
from tests.e2e.test_processes import _one_per_worker
from tests.e2e.test_trails_api import SITE, now, samples
from tests.helpers import details, rpc_error

USER = 9170357


class _Clock:
    def now(self) -> float:
        return time.time()


@dataclass
class Tenant:
    """An account and a secret for each single scope and for all of them."""

    name: str
    keys: dict[str, str]


def provision(url: str, *names: str) -> dict[str, Tenant]:
    engine = make_engine(url)
    try:
        migrate(engine)
        uows = SqlUnitOfWorkFactory(engine)
        out = {}
        for name in names:
            acct = accounts.create_account(uows, name).id
            keys = {
                s.value: accounts.create_key(uows, _Clock(), acct, frozenset({s})).secret
                for s in Scope
            }
            keys["all"] = accounts.create_key(uows, _Clock(), acct, frozenset(Scope)).secret
            out[name] = Tenant(name, keys)
        return out
    finally:
        engine.dispose()


def row_counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in metadata.sorted_tables
            }
    finally:
        engine.dispose()


@dataclass
class Deployment:
    server: ServerProcess
    url: str
    tenants: dict[str, Tenant]
    opened: list[Client]

    def clients(self, tenant: str, key: str = "all") -> list[Client]:
        """One client per worker, with ``tenant``'s key."""
        return self.with_secret(self.tenants[tenant].keys[key])

    def with_secret(self, secret: str) -> list[Client]:
        """One client per worker, sending ``secret``."""
        (a, b), opened = _one_per_worker(self.server.address)
        self.opened.extend(opened)
        for c in (a, b):
            c.metadata = (("x-api-key", secret),)
        return [a, b]


@pytest.fixture
def deployment(store_url: str, tmp_path: Path) -> Iterator[Deployment]:
    tenants = provision(store_url, "alpha", "beta")
    srv = ServerProcess(
        db_url=store_url,
        env_extra={"GEOPUNCH_PROCESSES": "2", "GEOPUNCH_INDEX_POLL_MS": "100"},
    )
    srv.start(tmp_path)
    d = Deployment(srv, store_url, tenants, [])
    try:
        yield d
    finally:
        for c in d.opened:
            c.close()
        srv.terminate()


def answer(fn: Callable[[], Any]) -> tuple[Any, ...]:
    """What a call answered, without its request id: the code, details and
    ErrorInfo of a failure, or the reply's data."""
    try:
        reply = fn()
    except grpc.RpcError as err:
        info, violations = details(err)
        return (err.code(), err.details(), info.reason, dict(info.metadata), violations)
    if isinstance(reply, list):  # a stream's events
        return ("OK", [e.SerializeToString(deterministic=True) for e in reply])
    reply.ClearField("request_id")
    return ("OK", reply.SerializeToString(deterministic=True))


def events_of(c: Client, **filters: Any) -> list[location_pb2.Event]:
    """Every event the key's account may see, as one stream reads them in 0.3 s."""
    stream = c.locations.WatchEvents(
        location_pb2.WatchEventsRequest(**filters), metadata=c.metadata, timeout=0.3
    )
    out: list[location_pb2.Event] = []
    try:
        out.extend(stream)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    return out


def cross_calls(
    c: Client, t: int, tc: int, sched: int, fence: str, key_id: str, hook: str = "whsub_none"
) -> dict[str, Any]:
    """Every RPC of the API, naming the resources of another account (at time ``t``)."""
    where = common_pb2.Location(latitude=SITE[0], longitude=SITE[1])
    check = location_pb2.CheckLocationsRequest(time_clock_id=tc)
    check.packed.latitudes.append(SITE[0])
    check.packed.longitudes.append(SITE[1])
    fence_req = geofences_pb2.CreateGeofencesRequest(time_clock_id=tc)
    g = fence_req.geofences.add(name="intruder", fence_size=100)
    g.location.address, g.location.latitude, g.location.longitude = "x", *SITE
    shift = scheduler_pb2.ScheduledShift(
        start_time=t + 86_400, end_time=t + 90_000, job_id="job-kitchen", assigned_user_ids=[USER]
    )
    a, tk, w = c.admin, c.timeclock, c.webhooks
    calls: dict[str, Callable[[], Any]] = {
        "UpdateTimeClock": lambda: c(
            a.UpdateTimeClock,
            admin_pb2.UpdateTimeClockRequest(
                time_clock=admin_pb2.TimeClock(id=tc, name="taken", timezone="UTC")
            ),
        ),
        "GetTimeClock": lambda: c(a.GetTimeClock, admin_pb2.GetTimeClockRequest(time_clock_id=tc)),
        "SetDayStatus": lambda: c(
            a.SetDayStatus,
            admin_pb2.SetDayStatusRequest(
                time_clock_id=tc, user_id=USER, dates=["2026-01-05"], status=admin_pb2.LOCKED
            ),
        ),
        "ListDayStatuses": lambda: c(
            a.ListDayStatuses, admin_pb2.ListDayStatusesRequest(time_clock_id=tc, user_id=USER)
        ),
        "UpdateScheduler": lambda: c(
            a.UpdateScheduler,
            admin_pb2.UpdateSchedulerRequest(
                scheduler=admin_pb2.Scheduler(id=sched, name="taken", timezone="UTC")
            ),
        ),
        "GetScheduler": lambda: c(
            a.GetScheduler, admin_pb2.GetSchedulerRequest(scheduler_id=sched)
        ),
        "ListApiKeys": lambda: c(a.ListApiKeys, admin_pb2.ListApiKeysRequest()),
        "RotateApiKey": lambda: c(a.RotateApiKey, admin_pb2.RotateApiKeyRequest(key_id=key_id)),
        "RevokeApiKey": lambda: c(a.RevokeApiKey, admin_pb2.RevokeApiKeyRequest(key_id=key_id)),
        "ListGeofences": lambda: c(
            c.geofences.ListGeofences, geofences_pb2.ListGeofencesRequest(time_clock_id=tc)
        ),
        "CreateGeofences": lambda: c(c.geofences.CreateGeofences, fence_req),
        "GetGeofence": lambda: c(
            c.geofences.GetGeofence,
            geofences_pb2.GetGeofenceRequest(time_clock_id=tc, fence_id=fence),
        ),
        "DeleteGeofence": lambda: c(
            c.geofences.DeleteGeofence,
            geofences_pb2.DeleteGeofenceRequest(time_clock_id=tc, fence_id=fence),
        ),
        "CheckLocations": lambda: c(c.locations.CheckLocations, check),
        "EvaluateTrails": lambda: c(
            c.locations.EvaluateTrails,
            location_pb2.EvaluateTrailsRequest(samples=samples(tc, [0, 900], t - 5, USER)),
        ),
        "ReportLocations": lambda: c(
            c.locations.ReportLocations,
            location_pb2.ReportLocationsRequest(samples=samples(tc, [0, 900], t - 5, USER)),
        ),
        "WatchEvents": lambda: events_of(c),
        "WatchEvents(time clock)": lambda: events_of(c, time_clock_ids=[tc]),
        "ClockIn": lambda: c(
            tk.ClockIn,
            timeclock_pb2.ClockInRequest(
                time_clock_id=tc, user_id=USER, location_data=where, idempotency_key="x-in"
            ),
        ),
        "ClockOut": lambda: c(
            tk.ClockOut,
            timeclock_pb2.ClockOutRequest(time_clock_id=tc, user_id=USER, idempotency_key="x-out"),
        ),
        "StartManualBreak": lambda: c(
            tk.StartManualBreak,
            timeclock_pb2.StartManualBreakRequest(
                time_clock_id=tc, user_id=USER, manual_break_id="lunch"
            ),
        ),
        "EndManualBreak": lambda: c(
            tk.EndManualBreak, timeclock_pb2.EndManualBreakRequest(time_clock_id=tc, user_id=USER)
        ),
        "ListManualBreaks": lambda: c(
            tk.ListManualBreaks, timeclock_pb2.ListManualBreaksRequest(time_clock_id=tc)
        ),
        "ValidatePunch": lambda: c(
            tk.ValidatePunch,
            timeclock_pb2.ValidatePunchRequest(
                clock_out=timeclock_pb2.ClockOutRequest(time_clock_id=tc, user_id=USER)
            ),
        ),
        "CreateShifts": lambda: c(
            c.scheduler.CreateShifts,
            scheduler_pb2.CreateShiftsRequest(scheduler_id=sched, shifts=[shift]),
        ),
        "ListShifts": lambda: c(
            c.scheduler.ListShifts,
            scheduler_pb2.ListShiftsRequest(
                scheduler_id=sched, start_time=t - 86_400, end_time=t + 7 * 86_400
            ),
        ),
        "CreateTimeActivities": lambda: c(
            tk.CreateTimeActivities,
            timeclock_pb2.CreateTimeActivitiesRequest(
                time_clock_id=tc,
                time_activities=[
                    timeclock_pb2.UserTimeActivities(
                        user_id=USER,
                        shifts=[
                            timeclock_pb2.TimeActivityShift(
                                start=timeclock_pb2.TimeActivityPoint(timestamp=t - 7200),
                                end=timeclock_pb2.TimeActivityPoint(timestamp=t - 3600),
                            )
                        ],
                    )
                ],
            ),
        ),
        "ListTimeActivities": lambda: c(
            tk.ListTimeActivities,
            timeclock_pb2.ListTimeActivitiesRequest(
                time_clock_id=tc, start_time=t - 86_400, end_time=t + 86_400
            ),
        ),
        "UpdateTimeActivity": lambda: c(
            tk.UpdateTimeActivity,
            timeclock_pb2.UpdateTimeActivityRequest(
                time_clock_id=tc,
                activity_id="shift-x",
                start=timeclock_pb2.TimeActivityPoint(timestamp=t - 7200),
                end=timeclock_pb2.TimeActivityPoint(timestamp=t - 3600),
            ),
        ),
        "DeleteTimeActivity": lambda: c(
            tk.DeleteTimeActivity,
            timeclock_pb2.DeleteTimeActivityRequest(time_clock_id=tc, activity_id="shift-x"),
        ),
        "GetUserStatuses": lambda: c(
            tk.GetUserStatuses, timeclock_pb2.GetUserStatusesRequest(time_clock_id=tc)
        ),
        "ListWebhookSubscriptions": lambda: c(
            w.ListWebhookSubscriptions, webhooks_pb2.ListWebhookSubscriptionsRequest()
        ),
        "GetWebhookSubscription": lambda: c(
            w.GetWebhookSubscription, webhooks_pb2.GetWebhookSubscriptionRequest(id=hook)
        ),
        "UpdateWebhookSubscription": lambda: c(
            w.UpdateWebhookSubscription,
            webhooks_pb2.UpdateWebhookSubscriptionRequest(
                id=hook, subscription=webhooks_pb2.WebhookSubscription(url="http://127.0.0.1:9/")
            ),
        ),
        "DeleteWebhookSubscription": lambda: c(
            w.DeleteWebhookSubscription, webhooks_pb2.DeleteWebhookSubscriptionRequest(id=hook)
        ),
        "ListWebhookDeliveries": lambda: c(
            w.ListWebhookDeliveries, webhooks_pb2.ListWebhookDeliveriesRequest(id=hook)
        ),
        "ReplayWebhookSubscription": lambda: c(
            w.ReplayWebhookSubscription,
            webhooks_pb2.ReplayWebhookSubscriptionRequest(id=hook, from_seq=1),
        ),
    }
    return {name: answer(fn) for name, fn in calls.items()}


def test_another_accounts_resources_answer_as_missing_ones_and_stay_untouched(
    deployment: Deployment,
) -> None:
    alpha, alpha2 = deployment.clients("alpha")
    beta, beta2 = deployment.clients("beta")
    tc, sched, t = 424242, 434343, now()
    alpha_key = alpha(alpha.admin.ListApiKeys, admin_pb2.ListApiKeysRequest()).data.keys[0].id

    # What beta gets while none of these ids exist anywhere...
    before = cross_calls(beta, t, tc, sched, "fence-none", alpha_key)
    # ... alpha then makes them, with a fence, a punch, a locked day and events
    # (on both workers) ...
    make_time_clock(
        alpha,
        id=tc,
        user_ids=[USER],
        manual_breaks_enabled=True,
        manual_break_types=[admin_pb2.ManualBreakType(id="lunch", name="Lunch")],
    )
    make_scheduler(alpha2, id=sched, user_ids=[USER])
    fence = add_fence(alpha2, tc, *SITE, 200, on_geofence_exit_action="autoClockOut")
    alpha(
        alpha.timeclock.ClockIn,
        timeclock_pb2.ClockInRequest(
            time_clock_id=tc,
            user_id=USER,
            timestamp=now() - 60,
            location_data=common_pb2.Location(latitude=SITE[0], longitude=SITE[1]),
        ),
    )
    alpha2(
        alpha2.admin.SetDayStatus,
        admin_pb2.SetDayStatusRequest(
            time_clock_id=tc, user_id=USER, dates=["2026-01-06"], status=admin_pb2.APPROVED
        ),
    )
    t0 = now() - 30
    report = location_pb2.ReportLocationsRequest(samples=samples(tc, [0, 900], t0, USER))
    (exit_event,) = alpha2(alpha2.locations.ReportLocations, report).data.results.exits
    assert exit_event.outcome == "clockedOut"
    assert events_of(alpha), "alpha has events"
    hook = alpha(
        alpha.webhooks.CreateWebhookSubscription,
        webhooks_pb2.CreateWebhookSubscriptionRequest(
            subscription=webhooks_pb2.WebhookSubscription(url="http://127.0.0.1:9/alpha")
        ),
    ).data.id
    counts = row_counts(deployment.url)

    # ... and beta, on either worker, gets exactly the same answers (the
    # fence id is alpha's real one now), and changes nothing.
    for c in (beta, beta2):
        after = cross_calls(c, t, tc, sched, fence, alpha_key, hook)
        after_fence_missing = cross_calls(c, t, tc, sched, "fence-none", alpha_key)
        assert after_fence_missing == before
        named = [n for n in before if n in ("GetGeofence", "DeleteGeofence") or "Webhook" in n]
        for name in before:
            if "Geofence" not in name and name not in named:
                assert after[name] == before[name], name
        for name in named:
            if name == "ListWebhookSubscriptions":
                assert after[name] == before[name]
                continue
            assert after[name][0] == grpc.StatusCode.NOT_FOUND, name
            assert (
                after[name][1].replace(fence, "fence-none").replace(hook, "whsub_none")
                == after_fence_missing[name][1]
            ), name
    assert before["GetTimeClock"][0] == grpc.StatusCode.NOT_FOUND
    assert before["GetScheduler"][0] == grpc.StatusCode.NOT_FOUND
    assert before["RevokeApiKey"][0] == grpc.StatusCode.NOT_FOUND
    assert before["WatchEvents"] == ("OK", [])
    assert row_counts(deployment.url) == counts

    # Every RPC of the API was tried (Ping and the creates are account-free).
    creates = {"CreateTimeClock", "CreateScheduler", "CreateApiKey", "CreateWebhookSubscription"}
    assert set(SCOPES) - {"Ping", *creates} <= {n.split("(")[0] for n in before}

    # The same ids are free in beta's account, and the two stay apart,
    # also in the fence index of each worker.
    make_time_clock(beta2, id=tc, name="Beta's clock", user_ids=[USER])
    mine = alpha2(alpha2.admin.GetTimeClock, admin_pb2.GetTimeClockRequest(time_clock_id=tc))
    assert mine.data.name == "Main clock"
    check = location_pb2.CheckLocationsRequest(time_clock_id=tc)
    check.packed.latitudes.append(SITE[0])
    check.packed.longitudes.append(SITE[1])
    for c, inside in ((alpha, b"\x01"), (alpha2, b"\x01"), (beta, b"\x00"), (beta2, b"\x00")):
        assert c(c.locations.CheckLocations, check).data.inside_u8 == inside


def test_every_rpc_has_a_scope_and_each_scope_opens_only_its_rpcs(
    deployment: Deployment,
) -> None:
    rpcs = {m.name for m in protobuf_strategies.rpc_methods()}
    assert rpcs == set(SCOPES)

    admin_client = deployment.clients("alpha", "admin")[0]
    tc = make_time_clock(admin_client, id=515151, user_ids=[USER]).id
    get = admin_pb2.GetTimeClockRequest(time_clock_id=tc)
    clock_in = timeclock_pb2.ClockInRequest(time_clock_id=tc, user_id=USER)
    create = admin_pb2.CreateTimeClockRequest(
        time_clock=admin_pb2.TimeClock(id=tc + 1, name="n", timezone="UTC")
    )
    allowed = {
        "read": {"GetTimeClock"},
        "punch": {"ClockIn"},
        "admin": {"CreateTimeClock"},
    }
    for scope, opens in allowed.items():
        c = deployment.clients("alpha", scope)[0]
        c(c.admin.Ping, admin_pb2.PingRequest())  # any key may ping
        calls: tuple[tuple[str, Callable[[], object]], ...] = (
            ("GetTimeClock", partial(c, c.admin.GetTimeClock, get)),
            ("ClockIn", partial(c, c.timeclock.ClockIn, clock_in)),
            ("CreateTimeClock", partial(c, c.admin.CreateTimeClock, create)),
        )
        for name, call in calls:
            if name in opens:
                call()
                continue
            err = rpc_error(call)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (scope, name)
            info, _ = details(err)
            assert info.reason == "SCOPE_REQUIRED"
            assert info.metadata["scope"] == SCOPES[name]


def _cli(url: str, *args: str) -> list[str]:
    out = forked_server.run([*args, "--database-url", url], timeout=120)
    out.check_returncode()
    return out.stdout.strip().splitlines()


def _refused_everywhere(d: Deployment, secret: str, deadline_s: float = 5.0) -> None:
    """Every worker refuses ``secret`` within ``deadline_s``."""
    for c in d.with_secret(secret):
        until = time.monotonic() + deadline_s
        while True:
            try:
                c(c.admin.Ping, admin_pb2.PingRequest())
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                break
            assert time.monotonic() < until, "a revoked key still works"
            time.sleep(0.05)


def test_key_lifecycle_through_the_cli_and_the_admin_rpcs(deployment: Deployment) -> None:
    url = deployment.url
    assert "gamma" in _cli(url, "accounts", "create", "gamma")[-1]
    made = _cli(
        url,
        "keys",
        "create",
        "--account",
        "gamma",
        "--scopes",
        "read,admin",
        "--label",
        "ops laptop",
    )
    secret = made[-1]
    assert secret.startswith("gpk_") and " " not in secret
    listed = "\n".join(_cli(url, "keys", "list", "--account", "gamma"))
    key_id = secret.split("_")[1]
    assert key_id in listed and "ops laptop" in listed and secret not in listed

    # The new key works on both workers (within one poll of the store).
    for c in deployment.with_secret(secret):
        until = time.monotonic() + 5
        while True:
            try:
                tc = make_time_clock(c)
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                assert time.monotonic() < until
                time.sleep(0.05)
        got = c(c.admin.GetTimeClock, admin_pb2.GetTimeClockRequest(time_clock_id=tc.id))
        assert got.data.id == tc.id

    # Rotation by the CLI: the new secret works, the old one stops everywhere.
    rotated = _cli(url, "keys", "rotate", key_id)[-1]
    assert rotated.startswith("gpk_") and rotated != secret
    _refused_everywhere(deployment, secret)

    # Through the admin RPCs, with the rotated key: make, list, rotate, revoke.
    c = deployment.with_secret(rotated)[1]
    made_rpc = c(
        c.admin.CreateApiKey, admin_pb2.CreateApiKeyRequest(scopes=["punch"], label="kiosk 7")
    ).data
    assert made_rpc.secret.startswith("gpk_") and list(made_rpc.key.scopes) == ["punch"]
    keys = c(c.admin.ListApiKeys, admin_pb2.ListApiKeysRequest()).data.keys
    assert {k.label for k in keys} == {"ops laptop", "kiosk 7"}
    assert all(not k.HasField("revoked_at") for k in keys if k.id != key_id)
    assert made_rpc.secret not in str(keys)
    kiosk = deployment.with_secret(made_rpc.secret)[0]
    until = time.monotonic() + 5
    while True:  # the kiosk's key reaches its worker within one poll
        try:
            kiosk(kiosk.admin.Ping, admin_pb2.PingRequest())
            break
        except grpc.RpcError:
            assert time.monotonic() < until
            time.sleep(0.05)
    denied = rpc_error(lambda: kiosk(kiosk.admin.ListApiKeys, admin_pb2.ListApiKeysRequest()))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    again = c(c.admin.RotateApiKey, admin_pb2.RotateApiKeyRequest(key_id=made_rpc.key.id)).data
    _refused_everywhere(deployment, made_rpc.secret)
    gone = c(c.admin.RevokeApiKey, admin_pb2.RevokeApiKeyRequest(key_id=again.key.id)).data
    assert gone.key.HasField("revoked_at") and gone.secret == ""
    _refused_everywhere(deployment, again.secret)
    # A revoked key cannot be rotated back to life.
    revived = rpc_error(
        lambda: c(c.admin.RotateApiKey, admin_pb2.RotateApiKeyRequest(key_id=again.key.id))
    )
    assert revived.code() == grpc.StatusCode.NOT_FOUND
    # The CLI revokes too, and the revoked key fails on every worker.
    _cli(url, "keys", "revoke", rotated.split("_")[1])
    _refused_everywhere(deployment, rotated)


def _seed_fleet(url: str, account: str, clocks: int, per_clock: int) -> None:
    """``clocks`` x ``per_clock`` enabled fences in a new account, through the repositories."""
    engine = make_engine(url)
    try:
        uows = SqlUnitOfWorkFactory(engine)
        acct = accounts.create_account(uows, account).id
        with uows(account=acct) as uow:
            for tc_id in range(1, clocks + 1):
                uow.time_clocks.add(TimeClock(id=tc_id, name=f"Depot {tc_id}", timezone="UTC"))
                uow.geofences.add_many(
                    [
                        Geofence(
                            f"f-{tc_id}-{k}",
                            tc_id,
                            "F",
                            True,
                            150,
                            (),
                            ExitAction.NO_ACTION,
                            "",
                            40.0 + tc_id / 1000,
                            k / 1000,
                        )
                        for k in range(per_clock)
                    ]
                )
            uow.commit()
    finally:
        engine.dispose()


def test_a_server_whose_fences_a_child_process_read_still_sees_other_processes(
    tmp_path: Path,
) -> None:
    """A SQLite store large enough for start-up to read its fences in a child
    process (ADBC's driver, its own copy of SQLite): the server starts from
    the rows and keeps seeing what other processes commit. A key the CLI
    makes works on both workers, and one it revokes stops. (Read in the
    server's own process, the second copy of SQLite dropped the server's
    locks and both failed.)"""
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    provision(url, "alpha")
    fences = ArrowFenceReader.MIN_FENCES + 1_000
    _seed_fleet(url, "fleet", fences // 100, 100)
    # No checkpoint: the worker that writes it does so once it serves, and a
    # sibling still loading would then start from it rather than from the rows.
    srv = ServerProcess(
        db_url=url, env_extra={"GEOPUNCH_PROCESSES": "2", "GEOPUNCH_INDEX_CHECKPOINT": "off"}
    )
    srv.start(tmp_path)
    d = Deployment(srv, url, {}, [])
    try:
        logs = srv.logs()
        assert logs.count('"from":"rows"') == 2 and logs.count(f'"fences":{fences}') == 2
        assert "not read beside" not in logs and "read again" not in logs
        secret = _cli(url, "keys", "create", "--account", "alpha", "--scopes", "read")[-1]
        for c in d.with_secret(secret):  # within one poll of the store
            until = time.monotonic() + 5
            while True:
                try:
                    c(c.admin.Ping, admin_pb2.PingRequest())
                    break
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert time.monotonic() < until, "a new key does not work"
                    time.sleep(0.05)
        _cli(url, "keys", "revoke", secret.split("_")[1])
        _refused_everywhere(d, secret)
    finally:
        for c in d.opened:
            c.close()
        srv.terminate()
