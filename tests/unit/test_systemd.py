"""``systemd.Notifier``: what systemd's variables ask for, taken once."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from geopunch.entrypoints.systemd import Notifier


def test_the_variables_are_read_once_and_the_watchdog_only_for_this_process() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000", "OTHER": "kept"}
    notifier = Notifier.from_env(env)
    assert notifier is not None and notifier.watchdog_s == 30
    assert env == {"OTHER": "kept"}  # no child inherits them
    assert Notifier.from_env(env) is None
    for variables, watchdog_s in (
        ({"WATCHDOG_USEC": "5", "WATCHDOG_PID": str(os.getpid())}, 5e-6),
        ({"WATCHDOG_USEC": "5", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "soon"}, None),
    ):
        found = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", **variables})
        assert found is not None and found.watchdog_s == watchdog_s, variables


def test_messages_reach_the_socket_and_a_missing_one_is_only_logged(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(1)
        notifier = Notifier(str(path), None)
        notifier.ready()
        notifier.alive()
        notifier.stopping()
        assert [sock.recv(64) for _ in range(3)] == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"]
    gone = Notifier(str(tmp_path / "gone"), None)
    gone.ready()  # no socket: a warning, never an error
    gone.alive()
    abstract = f"@geopunch-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + abstract[1:])
        sock.settimeout(1)
        Notifier(abstract, None).ready()
        assert sock.recv(64) == b"READY=1"
