"""geopunch's slim client: the gRPC stubs (``geopunch_client.v1``), a client
with punch, location and event helpers, and an offline punch queue.

One process cannot import both this package's stubs and the server
package's (``geopunch.v1``): they define the same protobuf names.
"""

from geopunch_client._client import CheckResult, GeopunchClient, location, new_idempotency_key
from geopunch_client.offline import FlushReport, OfflineQueue, Queued

__all__ = [
    "CheckResult",
    "FlushReport",
    "GeopunchClient",
    "OfflineQueue",
    "Queued",
    "location",
    "new_idempotency_key",
]
