"""Command line: ``geopunch serve`` and ``geopunch trails`` (also ``python -m geopunch ...``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from geopunch.config import DEFAULT_DATABASE_URL, DEFAULT_LISTEN, Config
from geopunch.logs import setup_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geopunch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--listen", help=f"host:port (GEOPUNCH_LISTEN, default {DEFAULT_LISTEN})")
    serve.add_argument(
        "--database-url",
        help=f"SQLAlchemy URL (GEOPUNCH_DATABASE_URL, default {DEFAULT_DATABASE_URL})",
    )
    serve.add_argument("--api-keys", help="comma-separated API keys (GEOPUNCH_API_KEYS)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (GEOPUNCH_LOG_LEVEL)")
    serve.add_argument(
        "--max-workers", type=int, help="threads for blocking handlers (GEOPUNCH_MAX_WORKERS)"
    )
    serve.add_argument(
        "--processes",
        type=int,
        help="server processes on the one port, e.g. one per core (GEOPUNCH_PROCESSES, default 1)",
    )
    serve.add_argument(
        "--max-clock-skew-seconds",
        type=float,
        help="how far ahead of the server's clock a location sample may be stamped "
        "(GEOPUNCH_MAX_CLOCK_SKEW_SECONDS, default 300)",
    )
    _trails_parser(sub)
    return parser


def _trails_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "trails",
        help="validate GPS trail files (CSV, Parquet) against geofences",
        description=(
            "Per-row verdicts and exit events of historical GPS trails. Input columns: "
            "user_id, time_clock_id, timestamp (Unix seconds), latitude, longitude, and "
            "optionally accuracy (metres). Writes OUT/samples/ and OUT/exits/ part files "
            "and prints a summary (a table on stderr, JSON on stdout)."
        ),
    )
    p.add_argument("inputs", nargs="+", type=Path, help="trail files (.csv or .parquet)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--fences", type=Path, help="GeoJSON FeatureCollection of fence centres")
    src.add_argument("--server", help="host:port of a running geopunch to take fences from")
    p.add_argument("--api-key", help="API key for --server (or GEOPUNCH_API_KEY)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    p.add_argument("--engine", choices=("local", "dask"), default="local")
    p.add_argument("--scheduler", help="Dask scheduler address (default: local threads)")
    p.add_argument("--partitions", type=int, help="Dask partitions (default: by input size)")
    p.add_argument("--chunk-rows", type=int, default=500_000, help="rows per chunk")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            config = Config.from_env(
                listen=args.listen,
                database_url=args.database_url,
                api_keys=args.api_keys,
                log_level=args.log_level,
                max_workers=args.max_workers,
                processes=args.processes,
                max_clock_skew_seconds=args.max_clock_skew_seconds,
            )
        except ValueError as exc:
            print(f"geopunch: {exc}", file=sys.stderr)
            return 2
        setup_logging(config.log_level)

        def ready(port: int) -> None:
            print(f"geopunch serving on {config.listen.rpartition(':')[0]}:{port}", flush=True)

        if config.processes > 1:
            from geopunch.entrypoints.supervisor import serve_processes

            serve_processes(config, ready)
        else:
            from geopunch.entrypoints.server import serve  # grpc loads only when serving

            serve(config, ready)
        return 0
    if args.command == "trails":
        try:
            from geopunch.entrypoints.trails_cli import run
        except ImportError as exc:  # pyarrow, dask and rich come with the extra
            print(
                f"geopunch trails needs the 'trails' extra ({exc.name} is missing): "
                "pip install 'geopunch[trails]'",
                file=sys.stderr,
            )
            return 2
        return run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
