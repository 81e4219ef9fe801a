"""WebhookService, and proto <-> domain conversion of subscriptions."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from geopunch.adapters.grpc.auth import account
from geopunch.domain.errors import DomainError, ErrorCode
from geopunch.domain.ports import UnitOfWorkFactory
from geopunch.domain.webhooks import Attempt, Subscription, SubscriptionChange
from geopunch.logs import request_id_var
from geopunch.service import webhooks as use_cases
from geopunch.service.webhooks import UrlGuard
from geopunch.v1 import webhooks_pb2, webhooks_pb2_grpc

#: What an update without a mask changes.
DEFAULT_MASK = ("url", "event_types", "time_clock_ids")
UPDATABLE = frozenset({*DEFAULT_MASK, "secret", "status"})


def subscription_to_proto(
    s: Subscription, *, with_secret: bool
) -> webhooks_pb2.WebhookSubscription:
    return webhooks_pb2.WebhookSubscription(
        id=s.id,
        url=s.url,
        event_types=list(s.event_types),
        time_clock_ids=list(s.time_clock_ids),
        secret=s.secret if with_secret else "",
        status=s.status.value,
        delivered_through_seq=s.cursor,
        failed_attempts=s.attempts,
        failing_since_ms=s.failing_since or 0,
        next_attempt_at_ms=s.next_attempt_at,
        created_at_ms=s.created_at,
        modified_at_ms=s.modified_at,
    )


def delivery_to_proto(a: Attempt) -> webhooks_pb2.WebhookDelivery:
    msg = webhooks_pb2.WebhookDelivery(
        id=a.id,
        seq=a.seq,
        event_id=a.event_id,
        event_type=a.event_type,
        attempt=a.attempt,
        attempted_at_ms=a.attempted_at,
        latency_ms=a.latency_ms,
        error=a.error or "",
        succeeded=a.succeeded,
    )
    if a.status_code is not None:
        msg.status_code = a.status_code
    return msg


def change_from_proto(
    msg: webhooks_pb2.WebhookSubscription, fields: tuple[str, ...]
) -> SubscriptionChange:
    unknown = sorted(set(fields) - UPDATABLE)
    if unknown:
        raise DomainError(
            ErrorCode.INVALID_ARGUMENT,
            f"update_mask names {', '.join(repr(f[:40]) for f in unknown[:5])}; "
            f"updatable: {', '.join(sorted(UPDATABLE))}",
        )
    return SubscriptionChange(
        url=msg.url if "url" in fields else None,
        event_types=tuple(msg.event_types) if "event_types" in fields else None,
        time_clock_ids=tuple(msg.time_clock_ids) if "time_clock_ids" in fields else None,
        secret=msg.secret if "secret" in fields else None,
        status=msg.status if "status" in fields else None,
    )


def _one(s: Subscription, *, with_secret: bool = False) -> webhooks_pb2.WebhookSubscriptionResponse:
    return webhooks_pb2.WebhookSubscriptionResponse(
        request_id=request_id_var.get(), data=subscription_to_proto(s, with_secret=with_secret)
    )


class WebhookServicer(webhooks_pb2_grpc.WebhookServiceServicer):
    def __init__(self, uows: UnitOfWorkFactory, guard: UrlGuard) -> None:
        self._uows, self._guard = uows, guard

    def CreateWebhookSubscription(
        self, request: webhooks_pb2.CreateWebhookSubscriptionRequest, context: Any
    ) -> webhooks_pb2.WebhookSubscriptionResponse:
        change = change_from_proto(request.subscription, (*DEFAULT_MASK, "secret"))
        if not request.subscription.url:  # unset, so that the rules say it is required
            change = replace(change, url=None)
        sub = use_cases.create_subscription(
            self._uows, account(), change, self._guard, "subscription."
        )
        return _one(sub, with_secret=True)

    def ListWebhookSubscriptions(
        self, request: webhooks_pb2.ListWebhookSubscriptionsRequest, context: Any
    ) -> webhooks_pb2.WebhookSubscriptionsResponse:
        subs = use_cases.list_subscriptions(self._uows, account())
        return webhooks_pb2.WebhookSubscriptionsResponse(
            request_id=request_id_var.get(),
            data=[subscription_to_proto(s, with_secret=False) for s in subs],
        )

    def GetWebhookSubscription(
        self, request: webhooks_pb2.GetWebhookSubscriptionRequest, context: Any
    ) -> webhooks_pb2.WebhookSubscriptionResponse:
        return _one(use_cases.get_subscription(self._uows, account(), request.id))

    def UpdateWebhookSubscription(
        self, request: webhooks_pb2.UpdateWebhookSubscriptionRequest, context: Any
    ) -> webhooks_pb2.WebhookSubscriptionResponse:
        fields = tuple(request.update_mask.paths) or DEFAULT_MASK
        change = change_from_proto(request.subscription, fields)
        sub = use_cases.update_subscription(self._uows, account(), request.id, change, self._guard)
        return _one(sub, with_secret="secret" in fields)

    def DeleteWebhookSubscription(
        self, request: webhooks_pb2.DeleteWebhookSubscriptionRequest, context: Any
    ) -> webhooks_pb2.DeleteWebhookSubscriptionResponse:
        use_cases.delete_subscription(self._uows, account(), request.id)
        return webhooks_pb2.DeleteWebhookSubscriptionResponse(request_id=request_id_var.get())

    def ListWebhookDeliveries(
        self, request: webhooks_pb2.ListWebhookDeliveriesRequest, context: Any
    ) -> webhooks_pb2.WebhookDeliveriesResponse:
        page, token = use_cases.list_deliveries(
            self._uows, account(), request.id, request.page_size, request.page_token
        )
        return webhooks_pb2.WebhookDeliveriesResponse(
            request_id=request_id_var.get(),
            data=[delivery_to_proto(a) for a in page],
            next_page_token=token,
        )

    def ReplayWebhookSubscription(
        self, request: webhooks_pb2.ReplayWebhookSubscriptionRequest, context: Any
    ) -> webhooks_pb2.WebhookSubscriptionResponse:
        sub = use_cases.replay_subscription(self._uows, account(), request.id, request.from_seq)
        return _one(sub)
