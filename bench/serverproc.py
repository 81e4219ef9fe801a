"""Start ``geopunch serve`` for a benchmark and stop it afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def serve(db: Path, api_key: str, processes: int = 1) -> Iterator[str]:
    """A server (``processes`` worker processes) on a free loopback port over
    the SQLite file ``db``; yields its address."""
    with _serve(f"sqlite:///{db}", api_key, processes, http=False) as (address, _):
        yield address


@contextmanager
def serve_url(database_url: str, api_key: str) -> Iterator[str]:
    """As ``serve``, on any store URL (a PostgreSQL schema, say)."""
    with _serve(database_url, api_key, 1, http=False) as (address, _):
        yield address


@contextmanager
def serve_url_with_http(database_url: str, api_key: str) -> Iterator[tuple[str, str]]:
    """As ``serve_url``, with the HTTP API on a free port too; yields both addresses."""
    with _serve(database_url, api_key, 1, http=True) as both:
        yield both


@contextmanager
def serve_with_http(db: Path, api_key: str, processes: int = 1) -> Iterator[tuple[str, str]]:
    """As ``serve``, with the HTTP API on a free port too; yields both addresses."""
    with _serve(f"sqlite:///{db}", api_key, processes, http=True) as both:
        yield both


@contextmanager
def _serve(
    database_url: str, api_key: str, processes: int, http: bool
) -> Iterator[tuple[str, str]]:
    env = {
        **os.environ,
        "GEOPUNCH_API_KEYS": api_key,
        "GEOPUNCH_LOG_LEVEL": "WARNING",
        "GEOPUNCH_DATABASE_URL": database_url,
        "GEOPUNCH_LISTEN": "127.0.0.1:0",
        "GEOPUNCH_PROCESSES": str(processes),
        # Off unless measured: the default HTTP port stays free for other runs.
        "GEOPUNCH_HTTP_LISTEN": "127.0.0.1:0" if http else "off",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "geopunch", "serve"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server exited with {proc.wait(30)} before listening")
        http_address = proc.stdout.readline().split()[-1] if http else ""
        yield line.split()[-1], http_address
    finally:
        proc.terminate()
        proc.wait(60)


def launch_logged(database_url: str, api_key: str, log: Path, **env: str) -> subprocess.Popen[str]:
    """``geopunch serve`` on a free loopback port with its log in ``log``,
    returned at once: its ready line (the gRPC address last) is the caller's
    to read off ``proc.stdout``. ``env`` adds or overrides ``GEOPUNCH_``
    settings (the HTTP API is off unless given)."""
    full = {
        **os.environ,
        "GEOPUNCH_API_KEYS": api_key,
        "GEOPUNCH_LOG_LEVEL": "INFO",
        "GEOPUNCH_DATABASE_URL": database_url,
        "GEOPUNCH_LISTEN": "127.0.0.1:0",
        "GEOPUNCH_HTTP_LISTEN": "off",
        **{f"GEOPUNCH_{name.upper()}": value for name, value in env.items()},
    }
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "geopunch", "serve"],
            env=full,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    return proc


#: Channel option giving each client thread a TCP connection of its own, as
#: separate devices have. grpc's channels in one process share a connection
#: to the same address by default, and with ``--processes`` connections, not
#: calls, are spread over the workers.
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


def worker_of(channel: Any, api_key: str) -> int:
    """Which server worker this channel's connection reached (0 for a single process)."""
    from geopunch.v1 import admin_pb2, admin_pb2_grpc

    _, call = admin_pb2_grpc.AdminServiceStub(channel).Ping.with_call(
        admin_pb2.PingRequest(), metadata=(("x-api-key", api_key),), timeout=30
    )
    return int(dict(call.initial_metadata()).get("x-geopunch-worker", 0))


def connections_per_worker(workers: list[int]) -> list[int]:
    """How many of the client's connections each worker serves."""
    return [workers.count(n) for n in range(max(workers, default=-1) + 1)]


def calls_per_worker(calls: list[int], workers: list[int]) -> list[int]:
    """Calls each worker served, from the calls made on each connection and
    the worker of each connection."""
    return [
        sum(c for c, w in zip(calls, workers, strict=True) if w == n)
        for n in range(max(workers, default=-1) + 1)
    ]


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds (user and system, all threads) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def child_pids(parent: int) -> list[int]:
    """The children of process ``parent``, in pid order."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == parent:
            out.append(int(stat.parent.name))
    return sorted(out)


def child_pid(marker: bytes) -> int:
    """The child of this process whose command line holds ``marker``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(text.rpartition(")")[2].split()[1]) == os.getpid() and marker in cmdline:
            return int(stat.parent.name)
    raise RuntimeError(f"no child of this process runs {marker!r}")


class CpuMeter:
    """CPU time of some processes over one timed phase: what a rate costs
    each of them, and whether the machine's cores had room for more."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.cores = len(os.sched_getaffinity(0))
        self.start()

    def start(self) -> None:
        self.wall = time.perf_counter()
        self.before = {name: cpu_s(pid) for name, pid in self.pids.items()}

    def per(self, units: int) -> dict[str, float]:
        """Milliseconds of CPU per unit (a call, an event) for each process,
        and the share of the machine's cores they kept busy together."""
        wall = time.perf_counter() - self.wall
        used = {name: cpu_s(pid) - self.before[name] for name, pid in self.pids.items()}
        out = {f"{name}_cpu_ms": round(s * 1000 / max(units, 1), 4) for name, s in used.items()}
        out["cores_busy"] = round(sum(used.values()) / (wall * self.cores), 2)
        return out
