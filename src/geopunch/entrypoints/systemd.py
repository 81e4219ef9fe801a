"""systemd's service notifications (``Type=notify``, ``WatchdogSec=``):
READY=1 once the server serves, WATCHDOG=1 while its event loop runs, and
STOPPING=1 when it drains, so that systemd starts dependants only when the
API answers and restarts a server that hangs rather than dies.

Written here rather than taken from a library: the protocol is one datagram
to the socket ``NOTIFY_SOCKET`` names (sd_notify(3)), and the bindings
(systemd-python) build against libsystemd's headers, which a plain Python
install does not have.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger("geopunch")

#: What systemd sets for the service's main process.
_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Tells systemd how the service is; every message is best effort."""

    def __init__(self, address: str, watchdog_s: float | None) -> None:
        # A name starting with "@" is in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        #: How often systemd must hear WATCHDOG=1 at least; None: not watched.
        self.watchdog_s = watchdog_s
        self._failed = False

    @staticmethod
    def from_env(env: MutableMapping[str, str] | None = None) -> Notifier | None:
        """The notifier systemd asked for, if any. The variables are removed
        (as sd_notify's ``unset_environment`` does), so that no child process,
        a worker of ``--processes`` say, speaks for the service."""
        env = os.environ if env is None else env
        address, usec, pid = (env.pop(name, "") for name in _VARIABLES)
        if not address:
            return None
        watched = usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid()))
        return Notifier(address, int(usec) / 1e6 if watched else None)

    def send(self, state: str) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(state.encode(), self._address)
        except OSError as exc:
            if not self._failed:  # once: a watchdog would repeat it every few seconds
                self._failed = True
                log.warning(
                    "cannot notify systemd", extra={"fields": {"error": str(exc), "state": state}}
                )

    def ready(self) -> None:
        self.send("READY=1")

    def alive(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
