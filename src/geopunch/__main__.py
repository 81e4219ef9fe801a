"""Command line: ``geopunch serve`` (also ``python -m geopunch serve``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    serve.add_argument("--max-workers", type=int, help="RPC worker threads (GEOPUNCH_MAX_WORKERS)")
    return parser


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
            )
        except ValueError as exc:
            print(f"geopunch: {exc}", file=sys.stderr)
            return 2
        setup_logging(config.log_level)
        from geopunch.adapters.grpc.server import serve  # grpc loads only when serving

        def ready(port: int) -> None:
            print(f"geopunch serving on {config.listen.rpartition(':')[0]}:{port}", flush=True)

        serve(config, ready)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
