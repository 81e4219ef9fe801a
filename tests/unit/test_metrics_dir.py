"""A supervisor's directory of metrics files outlives a supervisor that is
SIGKILLed (or taken by the OOM killer): the next one removes it, and only
those of supervisors that are gone."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from geopunch.entrypoints.supervisor import _metrics_dir


def _gone_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_directories_of_dead_supervisors_go_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"geopunch-metrics-{_gone_pid()}-k3x9q2_a"
    live = tmp_path / f"geopunch-metrics-{os.getppid()}-m2b7w1zz"
    older = tmp_path / "geopunch-metrics-4d2q4wp_"  # named before the pid was in it
    other = tmp_path / f"someone-else-{_gone_pid()}-abc"
    for d in (dead, live, older, other):
        d.mkdir()
        (d / "counter_1.db").write_bytes(b"\0" * 64)
    made = Path(_metrics_dir())
    assert made.parent == tmp_path and made.name.startswith(f"geopunch-metrics-{os.getpid()}-")
    assert not dead.exists()
    assert live.exists() and older.exists() and other.exists()
