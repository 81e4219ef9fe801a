"""Who is calling: set by the interceptor for each call, read by the servicers.

Which scope each RPC needs is decided here, in one table, so that a new RPC
without an entry is refused (it needs ``admin``) rather than open to every key.
"""

from __future__ import annotations

import contextvars

from geopunch.domain.accounts import Principal, Scope

principal_var: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")

_R, _P, _A = Scope.READ, Scope.PUNCH, Scope.ADMIN

#: The scope each RPC needs, by method name (the service does not matter:
#: names are unique across geopunch's services).
SCOPES: dict[str, Scope | None] = {
    # any valid key
    "Ping": None,
    # reads
    "GetTimeClock": _R,
    "ListDayStatuses": _R,
    "GetScheduler": _R,
    "ListGeofences": _R,
    "GetGeofence": _R,
    "CheckLocations": _R,
    "EvaluateTrails": _R,
    "WatchEvents": _R,
    "ListShifts": _R,
    "ListManualBreaks": _R,
    "ValidatePunch": _R,
    "ListTimeActivities": _R,
    "GetUserStatuses": _R,
    # punches and live positions
    "ClockIn": _P,
    "ClockOut": _P,
    "StartManualBreak": _P,
    "EndManualBreak": _P,
    # a device flushing punches older than the live window
    "CreateTimeActivities": _P,
    "ReportLocations": _P,
    # set-up
    "CreateTimeClock": _A,
    "UpdateTimeClock": _A,
    "SetDayStatus": _A,
    "CreateScheduler": _A,
    "UpdateScheduler": _A,
    "CreateGeofences": _A,
    "DeleteGeofence": _A,
    "CreateShifts": _A,
    "UpdateTimeActivity": _A,
    "DeleteTimeActivity": _A,
    "CreateApiKey": _A,
    "ListApiKeys": _A,
    "RotateApiKey": _A,
    "RevokeApiKey": _A,
    # webhook subscriptions hold their signing secrets
    "CreateWebhookSubscription": _A,
    "ListWebhookSubscriptions": _A,
    "GetWebhookSubscription": _A,
    "UpdateWebhookSubscription": _A,
    "DeleteWebhookSubscription": _A,
    "ListWebhookDeliveries": _A,
    "ReplayWebhookSubscription": _A,
}


def scope_of(method: str) -> Scope | None:
    """The scope a full method name (``/pkg.Service/Method``) needs (None: any)."""
    return SCOPES.get(method.rpartition("/")[2], Scope.ADMIN)


def account() -> int:
    """The calling key's account (only inside a call the interceptor let through)."""
    return principal_var.get().account_id
