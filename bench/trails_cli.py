"""``geopunch trails`` on a large Parquet file: time and peak memory.

    python3 dev.py run bench/trails_cli.py [--rows 10000000] [--clocks 1000]
        [--engine local] [--csv]

Writes a trail file of ``--rows`` samples (10,000 users walking near the
fence-engine fleet's fences, time-ordered, written in row groups so the
generator itself stays small) and the fleet's fences as GeoJSON, then runs
the command as a child process and reports its wall time, rows/s and peak
resident memory (the child's ru_maxrss), plus the input and output sizes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import GEOD, make_fleet


def write_fences(f, path: Path) -> None:  # type: ignore[no-untyped-def]
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [g.longitude, g.latitude]},
            "properties": {
                "fenceId": g.id,
                "timeClockId": g.time_clock_id,
                "fenceSize": g.fence_size_m,
                "onGeofenceExitAction": g.exit_action.value,
            },
        }
        for g in f.fences
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def write_trails(f, path: Path, rows: int, users: int, group: int = 1_000_000) -> None:  # type: ignore[no-untyped-def]
    """``users`` walkers, one sample per second each, in time order."""
    rng = np.random.default_rng(3)
    clock = (np.arange(users) % len(f.time_clocks)) + 1
    start = np.array([rng.choice(np.flatnonzero(f.point_clock == c)) for c in clock])
    lat, lon = f.point_lat[start].copy(), f.point_lon[start].copy()
    heading = rng.uniform(0, 360, users)
    schema = pa.schema(
        [
            ("user_id", pa.int64()),
            ("time_clock_id", pa.int64()),
            ("timestamp", pa.int64()),
            ("latitude", pa.float64()),
            ("longitude", pa.float64()),
            ("accuracy", pa.float64()),
        ]
    )
    t = 1_800_000_000
    with pq.ParquetWriter(path, schema) as writer:
        done = 0
        while done < rows:
            steps = min(group, rows - done) // users or 1
            cols: dict[str, list[np.ndarray]] = {name: [] for name in schema.names}
            for _ in range(steps):
                heading += rng.normal(0, 20, users)
                lon, lat, _ = GEOD.fwd(lon, lat, heading, rng.uniform(0, 8, users))
                cols["user_id"].append(np.arange(users, dtype=np.int64))
                cols["time_clock_id"].append(clock)
                cols["timestamp"].append(np.full(users, t, np.int64))
                cols["latitude"].append(np.asarray(lat))
                cols["longitude"].append(np.asarray(lon))
                cols["accuracy"].append(rng.choice(np.array([np.nan, 5.0, 30.0, 400.0]), users))
                t += 1
            table = pa.table({k: np.concatenate(v) for k, v in cols.items()}, schema=schema)
            writer.write_table(table)
            done += table.num_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--clocks", type=int, default=1000)
    ap.add_argument("--fences", type=int, default=100)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--engine", choices=("local", "dask"), default="local")
    ap.add_argument("--chunk-rows", type=int, default=500_000)
    ap.add_argument("--csv", action="store_true", help="the same trail as a CSV file")
    args = ap.parse_args()
    f = make_fleet(args.clocks, args.fences, 200_000, seed=5)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_fences(f, root / "fences.geojson")
        t = time.perf_counter()
        write_trails(f, root / "trails.parquet", args.rows, args.users)
        trails = root / "trails.parquet"
        if args.csv:
            trails = root / "trails.csv"
            pacsv.write_csv(pq.read_table(root / "trails.parquet"), trails)
        gen_s = time.perf_counter() - t
        t = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "geopunch",
                "trails",
                str(trails),
                "--fences",
                str(root / "fences.geojson"),
                "--out",
                str(root / "out"),
                "--engine",
                args.engine,
                "--chunk-rows",
                str(args.chunk_rows),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t
        if done.returncode:
            raise SystemExit(done.stderr)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        out_bytes = sum(p.stat().st_size for p in (root / "out").rglob("*") if p.is_file())
        print(
            json.dumps(
                {
                    "workload": {
                        "rows": args.rows,
                        "users": args.users,
                        "fences": args.clocks * args.fences,
                        "engine": args.engine,
                        "format": "csv" if args.csv else "parquet",
                        "chunk_rows": args.chunk_rows,
                    },
                    "input_mib": round(trails.stat().st_size / 2**20, 1),
                    "output_mib": round(out_bytes / 2**20, 1),
                    "generate_s": round(gen_s, 1),
                    "wall_s": round(wall, 1),
                    "rows_per_s": round(args.rows / wall),
                    "peak_rss_mib": round(peak_kib / 1024, 1),
                    "summary": json.loads(done.stdout.strip().splitlines()[-1]),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
