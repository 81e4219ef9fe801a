"""What an analyst sees: ``geopunch trails`` in a real terminal, captured with tmux.

    python3 dev.py run bench/terminal_picture.py [--rows 2000000] [--csv]

Writes the benchmark's trail file and fences (see ``trails_cli.py``), runs
the command in a detached 80x24 tmux session (a real pseudo-terminal, so
the progress display draws as it does for a person), captures the pane
halfway through and at the end, and prints both captures: the pictures in
docs/api.md come from here.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fleet import make_fleet
from trails_cli import write_fences, write_trails

SESSION = "geopunch-trails-picture"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--csv", action="store_true")
    ap.add_argument("--engine", choices=("local", "dask"), default="local")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        fleet = make_fleet(1000, 100, 200_000)  # the points seed where users walk
        write_fences(fleet, d / "fences.geojson")
        write_trails(fleet, d / "trips.parquet", args.rows, 3000)
        trips = d / "trips.parquet"
        if args.csv:
            pacsv.write_csv(pq.read_table(trips), d / "trips.csv")
            trips = d / "trips.csv"
        command = [
            sys.executable, "-m", "geopunch", "trails", str(trips.name),
            "--fences", "fences.geojson", "--out", "result", "--engine", args.engine,
        ]  # fmt: skip
        shell = f"cd {shlex.quote(tmp)} && {shlex.join(command)}; sleep 30"
        tmux("new-session", "-d", "-s", SESSION, "-x", "80", "-y", "24", shell)
        try:
            pictures = []
            started = time.monotonic()
            while not (d / "result" / "_SUCCESS").exists() and time.monotonic() - started < 600:
                pane = tmux("capture-pane", "-p", "-t", SESSION)
                if "%" in pane and " 0%" not in pane and not pictures:
                    pictures.append(pane)
                time.sleep(0.2)
            time.sleep(1.0)
            pictures.append(tmux("capture-pane", "-p", "-t", SESSION))
        finally:
            subprocess.run(["tmux", "kill-session", "-t", SESSION], check=False)
    for picture in pictures:
        print("\n".join(line.rstrip() for line in picture.rstrip().splitlines()))
        print("-" * 80)


if __name__ == "__main__":
    main()
