"""The server's allocator settings (bootstrap.map_large_blocks_alone), checked
in a fresh interpreter so that nothing else has moved glibc's thresholds."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")

_PROBE = textwrap.dedent(
    """
    import json, resource, threading
    from geopunch import bootstrap

    bootstrap.map_large_blocks_alone()

    def rss_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    faults = {}

    def answers():
        # A listed page's worth of bytes, made and dropped call after call
        # on a worker thread, as the server's handlers do.
        for _ in range(5):
            block = b"x" * 1_500_000
            del block
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(40):
            block = b"x" * 1_500_000
            del block
        faults["answers"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    t = threading.Thread(target=answers)
    t.start()
    t.join()

    base = rss_mib()
    big = [b"y" * bootstrap.MAP_ALONE_FROM for _ in range(40)]
    held = rss_mib() - base
    del big
    faults["held_mib"] = held
    faults["kept_mib"] = rss_mib() - base
    print(json.dumps(faults))
    """
)


def test_page_sized_blocks_are_reused_and_large_ones_handed_back() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    ).stdout
    probe = json.loads(out)
    # 40 blocks of 367 pages each would fault about 14,700 pages if every
    # block were a fresh mapping; reused from the heap they fault none.
    assert probe["answers"] < 1_000, probe
    # Blocks from MAP_ALONE_FROM up still go back to the system when freed.
    assert probe["held_mib"] > 100, probe
    assert probe["kept_mib"] < 10, probe
