"""A log reader that stops reading (journald stalled, a container runtime's
log driver backed up) holds up no call: lines wait in a bounded buffer, and
those past it are dropped, counted and said once stderr takes lines again."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from pathlib import Path

from geopunch.v1 import admin_pb2
from tests.conftest import Client, ServerProcess
from tests.helpers import scrape, value


def test_a_stalled_log_reader_holds_up_no_call(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)  # full after a few dozen lines
    srv = ServerProcess(
        db_url=f"sqlite:///{tmp_path / 'stalled.db'}",
        env_extra={"GEOPUNCH_LOG_BUFFER_LINES": "100"},
        stderr_fd=write_fd,
    )
    try:
        srv.start(tmp_path)
    finally:
        os.close(write_fd)
    lines: list[str] = []
    reader = os.fdopen(read_fd)
    c = Client(srv.address)
    try:
        # Each call's access line goes to the stalled pipe; every call is
        # answered all the same, and within its deadline.
        for _ in range(600):
            c.admin.Ping(admin_pb2.PingRequest(), metadata=c.metadata, timeout=5)
        dropped = value(scrape(srv.http_address), "geopunch_log_lines_dropped_total")
        # Not dropped: the buffer's 100, what the pipe holds (lines of 150
        # bytes or more), and the batch the writer is blocked writing: the
        # lines it took from the buffer at once (at most the buffer's 100
        # and the one it waited for), one of them maybe half in the pipe.
        # Without that batch the bound once missed by a line (472 < 472.7).
        assert dropped >= 600 - 100 - 4096 / 150 - (100 + 1), dropped
        threading.Thread(target=lambda: lines.extend(reader), daemon=True).start()
        deadline = time.monotonic() + 20
        while not any('"log lines dropped"' in line for line in lines[:]):
            assert time.monotonic() < deadline, "the lines dropped were never said"
            c.admin.Ping(admin_pb2.PingRequest(), metadata=c.metadata, timeout=5)
            time.sleep(0.05)
        at_end = value(scrape(srv.http_address), "geopunch_log_lines_dropped_total")
        assert srv.terminate() == 0
        deadline = time.monotonic() + 10
        while not (lines and '"msg":"stopped"' in lines[-1]):
            assert time.monotonic() < deadline, "the last lines were not written at the stop"
            time.sleep(0.05)
    finally:
        c.close()
        if srv.proc is not None and srv.proc.poll() is None:
            srv.kill()
        reader.close()
    entries = [json.loads(line) for line in lines]
    said = [e for e in entries if e["msg"] == "log lines dropped"]
    assert sum(e["dropped"] for e in said) == at_end
    assert entries[-1]["msg"] == "stopped"
