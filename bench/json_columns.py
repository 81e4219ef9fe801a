"""CreateTimeActivities in process, JSON columns encoded by orjson (the
store's) against the standard library's ``json.dumps``.

    python3 dev.py run bench/json_columns.py [--rounds 6] [--calls 12] [--per-call 1000]

Each round runs both encoders, one after the other in an order that
alternates from round to round, each in a process of its own (prepared
statements keep the bind processors of the first engine of a process, so
two encoders cannot share one): a fresh SQLite store, one time clock, then
``--calls`` calls of ``create_time_activities`` with ``--per-call``
completed shifts (one per user, a day apart from call to call). A round
reports the median milliseconds a call (the first two left out: caches
warming), wall clock and CPU time of the calling thread, and the time spent
in the JSON encoder. Prints the medians over rounds and their ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TC = 5


class _Clock:
    def now(self) -> float:
        return time.time()


def one_round(encoder: str, calls: int, per_call: int) -> dict[str, float]:
    from geopunch.adapters.db import store
    from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine, migrate
    from geopunch.domain.accounts import DEFAULT_ACCOUNT
    from geopunch.domain.models import Job, TimeClock
    from geopunch.domain.timesheets import PointDraft, ShiftDraft, UserActivities
    from geopunch.service import admin, timesheets

    encode = store._json_text if encoder == "orjson" else json.dumps
    spent = [0.0]

    def timed(value: Any) -> str:
        started = time.perf_counter()
        text = encode(value)
        spent[0] += time.perf_counter() - started
        return text

    engine = make_engine(f"sqlite:///{tempfile.mkdtemp()}/bench.db")
    engine.dialect._json_serializer = timed  # type: ignore[attr-defined]
    migrate(engine)
    uows = SqlUnitOfWorkFactory(engine)
    users = frozenset(range(1, per_call + 1))
    tc = TimeClock(
        id=TC, name="b", timezone="America/New_York", jobs=(Job("j", "J"),), user_ids=users
    )
    admin.create_time_clock(uows, DEFAULT_ACCOUNT, tc, ["j"], assign_id=False)
    first_day = (int(time.time()) // 86400 - calls - 2) * 86400
    wall, cpu, encoding = [], [], []
    for call in range(calls):
        day = first_day + call * 86400
        shift = ShiftDraft(PointDraft(day + 9 * 3600), PointDraft(day + 17 * 3600), "j", "", "n")
        groups = [UserActivities(user, (shift,)) for user in sorted(users)]
        spent[0] = 0.0
        started, thread = time.perf_counter(), time.thread_time()
        timesheets.create_time_activities(uows, None, _Clock(), DEFAULT_ACCOUNT, TC, groups)
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.thread_time() - thread) * 1000)
        encoding.append(spent[0] * 1000)
    engine.dispose()
    return {
        "wall_ms": statistics.median(wall[2:]),
        "cpu_ms": statistics.median(cpu[2:]),
        "encoding_ms": statistics.median(encoding[2:]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=12)
    ap.add_argument("--per-call", type=int, default=1000)
    ap.add_argument("--one", choices=("orjson", "json"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_round(args.one, args.calls, args.per_call)))
        return
    runs: dict[str, list[dict[str, float]]] = {"orjson": [], "json": []}
    for r in range(args.rounds):
        for encoder in ("orjson", "json") if r % 2 else ("json", "orjson"):
            out = subprocess.run(
                [
                    *(sys.executable, str(Path(__file__).resolve()), "--one", encoder),
                    *("--calls", str(args.calls), "--per-call", str(args.per_call)),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            runs[encoder].append(json.loads(out))
    result: dict[str, Any] = {
        encoder: {
            key: round(statistics.median(r[key] for r in rs), 1)
            for key in ("wall_ms", "cpu_ms", "encoding_ms")
        }
        for encoder, rs in runs.items()
    }
    for key in ("wall_ms", "cpu_ms", "encoding_ms"):
        result[f"orjson_over_json_{key}"] = round(result["orjson"][key] / result["json"][key], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
