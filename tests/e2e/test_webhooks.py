"""Webhook subscriptions end to end: a real server delivering to a real
HTTP receiver that fails, answers late, goes down and comes back."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
from google.protobuf import field_mask_pb2

from geopunch.v1 import location_pb2, timeclock_pb2, webhooks_pb2
from tests.conftest import Client, ServerProcess, make_time_clock
from tests.e2e.test_trails_api import watch
from tests.helpers import eventually, expect_error
from tests.webhook_receiver import Received, Receiver, verify

_users = itertools.count(7_000_001)


def clock_of_users(client: Client) -> tuple[int, Iterator[int]]:
    """A time clock of its own and its users, each to punch once."""
    users = [next(_users) for _ in range(40)]
    return make_time_clock(client, user_ids=users).id, iter(users)


def punch_pairs(client: Client, clock: tuple[int, Iterator[int]], pairs: int) -> None:
    """``pairs`` clock-ins and clock-outs of fresh users: 2 events each."""
    tc, users = clock
    base = int(time.time()) - 3600
    for _ in range(pairs):
        user = next(users)
        client(
            client.timeclock.ClockIn,
            timeclock_pb2.ClockInRequest(time_clock_id=tc, user_id=user, timestamp=base),
        )
        client(
            client.timeclock.ClockOut,
            timeclock_pb2.ClockOutRequest(time_clock_id=tc, user_id=user, timestamp=base + 60),
        )


def subscribe(client: Client, url: str, **fields: object) -> webhooks_pb2.WebhookSubscription:
    sub = webhooks_pb2.WebhookSubscription(url=url, **fields)  # type: ignore[arg-type]
    req = webhooks_pb2.CreateWebhookSubscriptionRequest(subscription=sub)
    data: webhooks_pb2.WebhookSubscription = client(
        client.webhooks.CreateWebhookSubscription, req
    ).data
    return data


def logged(client: Client, tc: int, count: int) -> list[location_pb2.Event]:
    """The first ``count`` events of ``tc`` in the log."""
    return watch(client, count=count, time_clock_ids=[tc], timeout=20)


def check_delivered(
    receiver: Receiver, secret: str, want: list[location_pb2.Event], timeout: float = 60
) -> list[Received]:
    """Every wanted event was accepted, first deliveries in seq order, each
    signature verified; a repeat is only a redelivery of the same id and body."""
    firsts = receiver.wait_for(len(want), timeout)
    assert [r.webhook_id for r in firsts] == [e.id for e in want]
    for r, e in zip(firsts, want, strict=True):
        body = verify(secret, r)
        assert (body["seq"], body["type"], body["id"]) == (e.seq, e.type, e.id)
        assert body["timeClockId"] == e.time_clock_id and body["accountId"] == e.account_id
    by_id = {r.webhook_id: r.body for r in firsts}
    for r in receiver.requests:
        assert r.body == by_id.get(r.webhook_id, r.body)
        assert r.webhook_id in by_id
    return firsts


@pytest.fixture
def webhook_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Client]]:
    """A server of its own: a short attempt timeout and lease."""
    srv = ServerProcess(
        db_url=f"sqlite:///{tmp_path / 'hooks.db'}",
        env_extra={
            "GEOPUNCH_WEBHOOK_TIMEOUT_SECONDS": "1",
            "GEOPUNCH_WEBHOOK_LEASE_SECONDS": "2",
        },
    )
    srv.start(tmp_path)
    client = Client(srv.address)
    yield srv, client
    client.close()
    srv.terminate()


def test_every_event_arrives_in_order_through_errors_a_timeout_and_an_outage(
    webhook_server: tuple[ServerProcess, Client],
) -> None:
    _, client = webhook_server
    outage: dict[str, float] = {}

    def behaviour(r: Received) -> tuple[int, float]:
        # The third event: refused, then answered too late; then the
        # receiver goes down (below) and comes back.
        if r.event["seq"] == third and r.attempt == 1:
            return 503, 0.0
        if r.event["seq"] == third and r.attempt == 2:
            return 200, 1.5  # beyond the 1 s attempt timeout
        return 204, 0.0

    receiver = Receiver(behaviour).start()
    clock = clock_of_users(client)
    tc = clock[0]
    sub = subscribe(client, receiver.url, time_clock_ids=[tc])
    assert sub.secret.startswith("whsec_") and sub.status == "active"
    third = 0
    punch_pairs(client, clock, 1)
    first_two = logged(client, tc, 2)
    third = first_two[-1].seq + 1
    punch_pairs(client, clock, 1)  # events 3 and 4: the third fails twice
    # Wait for the late answer's attempt, then take the receiver down.
    deadline = time.monotonic() + 20
    while not any(r.attempt == 2 and r.event["seq"] == third for r in receiver.requests):
        assert time.monotonic() < deadline, "the retry never came"
        time.sleep(0.05)
    time.sleep(1.2)
    receiver.stop()
    outage["from"] = time.time()
    punch_pairs(client, clock, 3)  # committed while the receiver is down
    time.sleep(2.0)
    receiver.start()  # back, on the same port
    want = logged(client, tc, 10)
    check_delivered(receiver, sub.secret, want)
    # The subscription's progress and its attempts are there to read.
    got = client(
        client.webhooks.GetWebhookSubscription,
        webhooks_pb2.GetWebhookSubscriptionRequest(id=sub.id),
    ).data
    deadline = time.monotonic() + 5
    while got.delivered_through_seq != want[-1].seq and time.monotonic() < deadline:
        time.sleep(0.1)
        got = client(
            client.webhooks.GetWebhookSubscription,
            webhooks_pb2.GetWebhookSubscriptionRequest(id=sub.id),
        ).data
    assert got.delivered_through_seq == want[-1].seq
    assert got.secret == "" and got.failed_attempts == 0
    attempts = client(
        client.webhooks.ListWebhookDeliveries,
        webhooks_pb2.ListWebhookDeliveriesRequest(id=sub.id, page_size=500),
    ).data
    of_third = sorted((a for a in attempts if a.seq == third), key=lambda a: a.attempt)
    assert [a.succeeded for a in of_third][:2] == [False, False]
    assert of_third[0].status_code == 503 and "503" in of_third[0].error
    assert not of_third[1].HasField("status_code") and "within" in of_third[1].error
    assert of_third[-1].succeeded
    assert len(of_third) >= 3  # the outage cost at least one more


def test_a_failing_subscription_holds_back_only_itself_and_resumes_when_reactivated(
    tmp_path: Path,
) -> None:
    srv = ServerProcess(
        db_url=f"sqlite:///{tmp_path / 'hooks.db'}",
        env_extra={"GEOPUNCH_WEBHOOK_RETRY_HOURS": "0.0003"},  # about a second
    )
    srv.start(tmp_path)
    client = Client(srv.address)
    try:
        down = Receiver(lambda r: (500, 0.0)).start()
        up = Receiver().start()
        clock = clock_of_users(client)
        tc = clock[0]
        failing = subscribe(client, down.url, time_clock_ids=[tc])
        healthy = subscribe(client, up.url, time_clock_ids=[tc], event_types=["clockIn"])
        watcher = subscribe(client, up.url, event_types=["webhookSubscriptionFailing"])
        punch_pairs(client, clock, 2)
        want = logged(client, tc, 4)
        firsts = up.wait_for(2, 20)
        assert [r.webhook_id for r in firsts] == [want[0].id, want[2].id]
        for r in firsts:
            assert verify(healthy.secret, r)["type"] == "clockIn"
        notice = up.wait_for(3, 30)[-1]
        body = verify(watcher.secret, notice)
        assert body["type"] == "webhookSubscriptionFailing"
        assert body["payload"]["subscriptionId"] == failing.id
        assert body["payload"]["seq"] == want[0].seq
        sub = client(
            client.webhooks.GetWebhookSubscription,
            webhooks_pb2.GetWebhookSubscriptionRequest(id=failing.id),
        ).data
        assert sub.status == "failing" and sub.delivered_through_seq < want[0].seq
        tried = len(down.requests)
        assert tried >= 2 and {r.webhook_id for r in down.requests} == {want[0].id}
        # The receiver is fixed; reactivating delivers everything it missed.
        down.behaviour = lambda r: (200, 0.0)
        req = webhooks_pb2.UpdateWebhookSubscriptionRequest(
            id=failing.id,
            subscription=webhooks_pb2.WebhookSubscription(status="active"),
            update_mask=field_mask_pb2.FieldMask(paths=["status"]),
        )
        assert client(client.webhooks.UpdateWebhookSubscription, req).data.status == "active"
        check_delivered(down, failing.secret, want, timeout=20)
        # Replay: everything again from the second event on.
        req2 = webhooks_pb2.ReplayWebhookSubscriptionRequest(id=failing.id, from_seq=want[1].seq)
        client(client.webhooks.ReplayWebhookSubscription, req2)
        deadline = time.monotonic() + 20
        while len(down.accepted()) < 4 + 3:
            assert time.monotonic() < deadline, "the replay never came"
            time.sleep(0.05)
        replayed = down.accepted()[4:]
        assert [r.webhook_id for r in replayed] == [e.id for e in want[1:]]
    finally:
        client.close()
        srv.terminate()


def test_subscriptions_are_checked_listed_changed_and_deleted(client: Client) -> None:
    def create(**fields: object) -> object:
        return client(
            client.webhooks.CreateWebhookSubscription,
            webhooks_pb2.CreateWebhookSubscriptionRequest(
                subscription=webhooks_pb2.WebhookSubscription(**fields)  # type: ignore[arg-type]
            ),
        )

    for bad, field in (
        ({"url": "ftp://example.com/x"}, "url"),
        ({}, "url"),
        ({"url": "http://user:pw@example.com/"}, "url"),
        ({"url": "http://127.0.0.1:9/", "event_types": ["nope"]}, "event_types"),
        ({"url": "http://127.0.0.1:9/", "secret": "whsec_short"}, "secret"),
    ):
        _, violations = expect_error(
            partial(create, **bad), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"
        )
        assert [f for f, _ in violations] == [f"subscription.{field}"], violations
    mine = "whsec_" + "A" * 40
    sub = create(url="http://127.0.0.1:9/a", secret=mine, event_types=["clockIn"]).data  # type: ignore[attr-defined]
    assert sub.secret == mine and list(sub.event_types) == ["clockIn"]
    listed = client(
        client.webhooks.ListWebhookSubscriptions, webhooks_pb2.ListWebhookSubscriptionsRequest()
    ).data
    assert sub.id in {s.id for s in listed} and all(s.secret == "" for s in listed)
    changed = client(
        client.webhooks.UpdateWebhookSubscription,
        webhooks_pb2.UpdateWebhookSubscriptionRequest(
            id=sub.id,
            subscription=webhooks_pb2.WebhookSubscription(url="https://127.0.0.1:9/b"),
            update_mask=field_mask_pb2.FieldMask(paths=["url"]),
        ),
    ).data
    assert (changed.url, list(changed.event_types)) == ("https://127.0.0.1:9/b", ["clockIn"])
    assert changed.modified_at_ms > sub.modified_at_ms
    expect_error(
        lambda: client(
            client.webhooks.UpdateWebhookSubscription,
            webhooks_pb2.UpdateWebhookSubscriptionRequest(
                id=sub.id, update_mask=field_mask_pb2.FieldMask(paths=["cursor"])
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    client(
        client.webhooks.DeleteWebhookSubscription,
        webhooks_pb2.DeleteWebhookSubscriptionRequest(id=sub.id),
    )
    for call, req in (
        (client.webhooks.GetWebhookSubscription, webhooks_pb2.GetWebhookSubscriptionRequest),
        (client.webhooks.DeleteWebhookSubscription, webhooks_pb2.DeleteWebhookSubscriptionRequest),
        (client.webhooks.ListWebhookDeliveries, webhooks_pb2.ListWebhookDeliveriesRequest),
    ):
        expect_error(
            partial(client, call, req(id=sub.id)),
            grpc.StatusCode.NOT_FOUND,
            "WEBHOOK_SUBSCRIPTION_NOT_FOUND",
        )


def test_private_addresses_are_refused_unless_allowed(tmp_path: Path) -> None:
    srv = ServerProcess(
        db_url=f"sqlite:///{tmp_path / 'hooks.db'}",
        env_extra={"GEOPUNCH_WEBHOOK_ALLOW_PRIVATE": "0"},
    )
    srv.start(tmp_path)
    client = Client(srv.address)
    try:
        for url in (
            "http://127.0.0.1:8080/",
            "http://localhost/x",
            "http://[::1]/",
            "http://10.1.2.3/",
        ):
            expect_error(
                partial(subscribe, client, url),
                grpc.StatusCode.INVALID_ARGUMENT,
                "WEBHOOK_URL_NOT_ALLOWED",
            )
    finally:
        client.close()
        srv.terminate()


def test_subscriptions_over_http_deliver_and_list_their_attempts(
    client: Client, http: httpx.Client
) -> None:
    receiver = Receiver().start()
    clock = clock_of_users(client)
    made = http.post(
        "/webhooks/v1/subscriptions",
        json={"url": receiver.url, "timeClockIds": [clock[0]], "eventTypes": ["clockOut"]},
    )
    assert made.status_code == 200, made.text
    sub = made.json()["data"]
    assert sub["secret"].startswith("whsec_") and sub["status"] == "active"
    assert sub["eventTypes"] == ["clockOut"] and sub["timeClockIds"] == [clock[0]]
    punch_pairs(client, clock, 2)
    outs = [e for e in logged(client, clock[0], 4) if e.type == "clockOut"]
    check_delivered(receiver, sub["secret"], outs, timeout=20)
    got = http.get(f"/webhooks/v1/subscriptions/{sub['id']}").json()["data"]
    assert "secret" not in got
    # An attempt is logged once its answer is read, which may be just after
    # the receiver has the event.
    attempts = f"/webhooks/v1/subscriptions/{sub['id']}/deliveries"
    eventually(
        lambda: len(http.get(attempts).json()["data"]["deliveries"]) == 2,
        10,
        "both attempts logged",
    )
    page = http.get(
        f"/webhooks/v1/subscriptions/{sub['id']}/deliveries", params={"pageSize": 1}
    ).json()["data"]
    assert len(page["deliveries"]) == 1 and page["nextPageToken"]
    assert page["deliveries"][0]["seq"] == outs[-1].seq  # newest first
    rest = http.get(
        f"/webhooks/v1/subscriptions/{sub['id']}/deliveries",
        params={"pageToken": page["nextPageToken"]},
    ).json()["data"]
    assert [d["seq"] for d in rest["deliveries"]] == [outs[0].seq] and rest["nextPageToken"] is None
    bad = http.patch(
        f"/webhooks/v1/subscriptions/{sub['id']}", json={"eventTypes": ["nope"], "url": "x"}
    )
    assert bad.status_code == 400
    assert {e["field"] for e in bad.json()["errors"]} == {"url", "eventTypes"}
    changed = http.patch(
        f"/webhooks/v1/subscriptions/{sub['id']}", json={"secret": "whsec_" + "B" * 40}
    ).json()["data"]
    assert changed["secret"] == "whsec_" + "B" * 40 and changed["eventTypes"] == ["clockOut"]
    replayed = http.post(
        f"/webhooks/v1/subscriptions/{sub['id']}/replay", json={"fromSeq": outs[0].seq}
    )
    assert replayed.json()["data"]["deliveredThroughSeq"] == outs[0].seq - 1
    deadline = time.monotonic() + 20
    while len(receiver.accepted()) < 4:
        assert time.monotonic() < deadline, "the replay never came"
        time.sleep(0.05)
    again = receiver.accepted()[2:]
    assert [r.webhook_id for r in again] == [e.id for e in outs]
    for r in again:  # signed with the new secret
        verify("whsec_" + "B" * 40, r)
    assert http.delete(f"/webhooks/v1/subscriptions/{sub['id']}").status_code == 204
    missing = http.get(f"/webhooks/v1/subscriptions/{sub['id']}")
    assert missing.status_code == 404
    assert missing.json()["code"] == "WEBHOOK_SUBSCRIPTION_NOT_FOUND"
    receiver.stop()


def _kill_all(srv: ServerProcess) -> None:
    """SIGKILL the server and every worker process it started, at once."""
    assert srv.proc is not None
    family = [srv.proc.pid, *(c.pid for c in psutil.Process(srv.proc.pid).children(True))]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    srv.proc.wait(10)
