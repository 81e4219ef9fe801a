"""The webhook receivers of docs/events.md, run as written (secret and port
filled in) against the shared server: each verifies a real delivery's
signature and prints the event."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from geopunch.v1 import webhooks_pb2
from tests.conftest import Client
from tests.e2e.test_webhooks import clock_of_users, punch_pairs, subscribe
from tests.helpers import eventually, free_port, wait_listening

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "events.md").read_text()
#: npm packages the JavaScript receiver needs, installed once per checkout.
NODE_CACHE = ROOT / ".cache" / "docs-receivers"


def _block(lang: str, after: str) -> str:
    start = DOC.index(after)
    found = re.search(rf"```{lang}\n(.*?)```", DOC[start:], re.S)
    assert found, f"no {lang} block after {after!r}"
    return found.group(1)


def _run_receiver(cmd: list[str], cwd: Path, client: Client) -> str:
    """The receiver's output once it printed a clock-in (or 20 s passed)."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out = proc.stdout
    assert out is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(out), daemon=True)
    reader.start()
    try:
        port = int(cmd[-1]) if cmd[-1].isdigit() else 0
        wait_listening(port, proc, 20, "the receiver never listened", lambda: "".join(lines))
        clock = clock_of_users(client)
        punch_pairs(client, clock, 1)
        with contextlib.suppress(AssertionError):  # the caller's check says what came
            eventually(lambda: any("clockIn" in line for line in lines), 20, "a clock-in printed")
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(10)
        out.close()
    return "".join(lines)


def _prepare(code: str, secret: str, port: int) -> str:
    code = code.replace('"whsec_..."', repr(secret).replace("'", '"'))
    return code.replace("8000", str(port)).replace('"0.0.0.0"', '"127.0.0.1"')


@pytest.mark.parametrize("lang", ["python", "js"])
def test_the_documented_receivers_verify_real_deliveries(
    client: Client, tmp_path: Path, lang: str
) -> None:
    port = free_port()
    sub = subscribe(client, f"http://127.0.0.1:{port}/", event_types=["clockIn"])
    code = _prepare(_block(lang, "### A receiver that checks signatures"), sub.secret, port)
    if lang == "python":
        (tmp_path / "receiver.py").write_text(code)
        out = _run_receiver([sys.executable, "-u", "receiver.py", str(port)], tmp_path, client)
    else:
        node = shutil.which("node")
        assert node, "Node.js runs the documented JavaScript receiver"
        if not (NODE_CACHE / "node_modules" / "standardwebhooks").exists():
            NODE_CACHE.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["npm", "install", "--silent", "--prefix", str(NODE_CACHE), "standardwebhooks@1"],
                check=True,
                timeout=300,
            )
        (NODE_CACHE / "receiver.js").write_text(code)
        out = _run_receiver([node, "receiver.js", str(port)], NODE_CACHE, client)
    client(
        client.webhooks.DeleteWebhookSubscription,
        webhooks_pb2.DeleteWebhookSubscriptionRequest(id=sub.id),
    )
    assert "clockIn" in out, out
