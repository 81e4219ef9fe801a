"""``serve --processes N``: start-up, a killed worker's replacement, and memory.

    python3 dev.py run bench/workers.py [--processes 4] [--rounds 3]

On an empty SQLite store, each round:

- the baseline: ``geopunch serve`` as one process, seconds from launch to
  ``SERVING``;
- ``geopunch serve --processes N``: seconds from launch to the ready line
  (printed once every worker serves), then the memory of the whole process
  tree (supervisor, workers and whatever helper processes it keeps): the sum
  of resident sets, and the sum of proportional sets (PSS: a page shared by k
  processes counts 1/k in each), from ``/proc/PID/smaps_rollup``;
- one worker SIGKILLed: seconds until its replacement logs ``serving`` (the
  supervisor waits ``RESTART_PAUSE_S`` before starting it; that pause is
  subtracted), and of that, from the supervisor's "worker started" to the
  replacement's "serving" (the log's own times).

Prints JSON: the medians, and the N-process start over the one-process start.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from serverproc import launch_logged

from geopunch.entrypoints.supervisor import RESTART_PAUSE_S

API_KEY = "bench-key-0123456789"


def _launch(db: Path, processes: int, log: Path) -> tuple[subprocess.Popen[str], float]:
    started = time.monotonic()
    proc = launch_logged(
        f"sqlite:///{db}", API_KEY, log, http_listen="127.0.0.1:0", processes=str(processes)
    )
    assert proc.stdout is not None
    if not proc.stdout.readline():
        raise RuntimeError(f"the server exited before serving:\n{log.read_text()}")
    return proc, time.monotonic() - started


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(60)


def _memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB of ``pid`` and every descendant."""
    rss = pss = 0
    root = psutil.Process(pid)
    for p in (root, *root.children(recursive=True)):
        with open(f"/proc/{p.pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name == "Rss":
                    rss += int(rest.split()[0])
                elif name == "Pss":
                    pss += int(rest.split()[0])
    return rss / 1024, pss / 1024


def _lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def _serving_lines(log: Path) -> list[dict[str, Any]]:
    return [e for e in _lines(log) if e.get("msg") == "serving" and e.get("worker") == 0]


def _ts(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()


def _replacement(log: Path) -> tuple[float, float]:
    """Kill worker 0: seconds until a new worker 0 serves, less the restart
    pause; and of that, seconds from its start to its serving (log times)."""
    started = [e for e in _lines(log) if e.get("msg") == "worker started"]
    victim = next(e["pid"] for e in reversed(started) if e["worker"] == 0)
    before = len(_serving_lines(log))
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    deadline = killed + 120
    while len(_serving_lines(log)) == before:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no worker replaced the killed one:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)
    total = time.monotonic() - killed - RESTART_PAUSE_S
    entries = _lines(log)
    start = next(e for e in reversed(entries) if e.get("msg") == "worker started")
    return total, _ts(_serving_lines(log)[-1]) - _ts(start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    one, many, replaced, own, rss, pss = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            proc, seconds = _launch(Path(tmp) / f"one{n}.db", 1, Path(tmp) / f"one{n}.log")
            _stop(proc)
            one.append(seconds)
            log = Path(tmp) / f"many{n}.log"
            proc, seconds = _launch(Path(tmp) / f"many{n}.db", args.processes, log)
            try:
                many.append(seconds)
                time.sleep(1.0)  # past the workers' first housekeeping
                r, p = _memory(proc.pid)
                rss.append(r)
                pss.append(p)
                total, itself = _replacement(log)
                replaced.append(total)
                own.append(itself)
            finally:
                _stop(proc)
    result = {
        "processes": args.processes,
        "one_process_start_s": statistics.median(one),
        "workers_start_s": statistics.median(many),
        "workers_over_one": statistics.median(many) / statistics.median(one),
        "killed_worker_serving_again_s": statistics.median(replaced),
        "replacement_start_to_serving_s": statistics.median(own),
        "tree_rss_mib": statistics.median(rss),
        "tree_pss_mib": statistics.median(pss),
        "runs": {
            "one": one,
            "workers": many,
            "replaced": replaced,
            "replacement_own": own,
            "rss": rss,
            "pss": pss,
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
