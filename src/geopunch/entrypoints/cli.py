"""Command line: ``geopunch serve``, ``migrate``, ``accounts``, ``keys`` and ``trails``
(also ``python -m geopunch ...``)."""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from geopunch.config import (
    DEFAULT_DATABASE_URL,
    DEFAULT_HTTP_LISTEN,
    DEFAULT_LISTEN,
    Config,
    database_url,
)
from geopunch.entrypoints.process import lasting_imports
from geopunch.logs import close_logging, setup_logging


def _version() -> str:
    """The installed distribution's version (the source tree's when run uninstalled)."""
    try:
        return importlib.metadata.version("geopunch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geopunch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"geopunch {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--listen", help=f"host:port (GEOPUNCH_LISTEN, default {DEFAULT_LISTEN})")
    serve.add_argument(
        "--http-listen",
        help=f"host:port of the HTTP/JSON API, or 'off' "
        f"(GEOPUNCH_HTTP_LISTEN, default {DEFAULT_HTTP_LISTEN})",
    )
    serve.add_argument(
        "--http-allow-origins",
        help="web origins whose pages may call the HTTP API from a browser (CORS), comma-"
        "separated, such as https://kiosk.example.com, or * for any "
        "(GEOPUNCH_HTTP_ALLOW_ORIGINS, default none)",
    )
    serve.add_argument(
        "--metrics-listen",
        help="host:port of a listener for /metrics alone (GEOPUNCH_METRICS_LISTEN, default none; "
        "/metrics is also on the HTTP API's listener)",
    )
    serve.add_argument(
        "--database-url",
        help=f"SQLAlchemy URL (GEOPUNCH_DATABASE_URL, default {DEFAULT_DATABASE_URL})",
    )
    serve.add_argument(
        "--api-keys",
        help="bootstrap API keys of the default account, comma-separated (GEOPUNCH_API_KEYS); "
        "visible to every user in the process list: prefer --api-keys-file",
    )
    serve.add_argument(
        "--api-keys-file",
        help="file of bootstrap API keys, one per line (GEOPUNCH_API_KEYS_FILE)",
    )
    serve.add_argument("--tls-cert", help="PEM certificate chain: serve TLS (GEOPUNCH_TLS_CERT)")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert (GEOPUNCH_TLS_KEY)")
    serve.add_argument(
        "--tls-client-ca",
        help="PEM CA bundle: require client certificates it signed (GEOPUNCH_TLS_CLIENT_CA)",
    )
    serve.add_argument(
        "--receive-timeout-seconds",
        type=float,
        help=(
            "time a gRPC call has to send its message, and an HTTP request to arrive "
            "whole (GEOPUNCH_RECEIVE_TIMEOUT_SECONDS, default 10)"
        ),
    )
    serve.add_argument(
        "--max-streams-per-key",
        type=int,
        help="event streams one API key may hold (GEOPUNCH_MAX_STREAMS_PER_KEY, default 32)",
    )
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
        "--worker-timeout-seconds",
        type=float,
        help="with --processes: a worker whose event loop stops for this long is killed "
        "and started again (GEOPUNCH_WORKER_TIMEOUT_SECONDS, default 30; 0: never)",
    )
    serve.add_argument(
        "--worker-start-timeout-seconds",
        type=float,
        help="with --processes: how long a worker may take to start serving before it is "
        "killed and tried again (GEOPUNCH_WORKER_START_TIMEOUT_SECONDS, default 300)",
    )
    serve.add_argument(
        "--store-timeout-seconds",
        type=float,
        help="how long the store may keep a call waiting (a connection, a lock, a statement) "
        "before the call is answered UNAVAILABLE (GEOPUNCH_STORE_TIMEOUT_SECONDS, default 30)",
    )
    serve.add_argument(
        "--grace-seconds",
        type=float,
        help="how long a stop lets calls in flight finish (GEOPUNCH_GRACE_SECONDS, default 10)",
    )
    serve.add_argument(
        "--kernel-threads",
        type=int,
        help="threads of each process's parallel fence kernels (GEOPUNCH_KERNEL_THREADS; "
        "default 0: the cores available, divided among the processes)",
    )
    serve.add_argument(
        "--index-checkpoint",
        help="file the fence index is saved to at shutdown and read back at start-up, or 'off' "
        "(GEOPUNCH_INDEX_CHECKPOINT; default auto: <database file>.fence-index for SQLite, "
        "off for PostgreSQL)",
    )
    serve.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        help="the event loops of the gRPC and HTTP servers (one, shared) and the deliveries "
        "(GEOPUNCH_EVENT_LOOP; default auto: uvloop where installed)",
    )
    serve.add_argument(
        "--max-clock-skew-seconds",
        type=float,
        help="how far ahead of the server's clock a location sample may be stamped "
        "(GEOPUNCH_MAX_CLOCK_SKEW_SECONDS, default 300)",
    )
    serve.add_argument(
        "--webhook-allow-private",
        action="store_const",
        const="1",
        help="let webhook URLs reach loopback and private addresses "
        "(GEOPUNCH_WEBHOOK_ALLOW_PRIVATE=1)",
    )
    serve.add_argument(
        "--nats-url",
        help="publish every event to NATS JetStream at this server, e.g. nats://127.0.0.1:4222 "
        "(GEOPUNCH_NATS_URL; stream GEOPUNCH_NATS_STREAM, subjects "
        "GEOPUNCH_NATS_SUBJECT_PREFIX.<account>.<type>)",
    )
    _trails_parser(sub)
    _account_parsers(sub)
    migrate = sub.add_parser(
        "migrate",
        help="bring the store's schema to a revision (the newest by default) and exit",
        description=(
            "Servers migrate the store forward at start; this does it beforehand, or takes "
            "it back to an older release's revision (run with the newer release)."
        ),
    )
    migrate.add_argument("--to", help="schema revision, e.g. 0014 (default: the newest)")
    _database_option(migrate)
    return parser


def _database_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        help=f"SQLAlchemy URL of the server's store (GEOPUNCH_DATABASE_URL, "
        f"default {DEFAULT_DATABASE_URL})",
    )


def _account_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    accounts = sub.add_parser("accounts", help="manage accounts in the server's store")
    acc = accounts.add_subparsers(dest="action", required=True)
    create = acc.add_parser("create", help="create an account")
    create.add_argument("name", help="a-z, 0-9, '_', '.', '-'; at most 64 characters")
    _database_option(create)
    listing = acc.add_parser("list", help="list accounts")
    _database_option(listing)

    keys = sub.add_parser("keys", help="manage API keys in the server's store")
    k = keys.add_subparsers(dest="action", required=True)
    create = k.add_parser(
        "create", help="create a key; its secret is printed once, alone on the last line"
    )
    create.add_argument("--account", required=True, help="account name")
    create.add_argument(
        "--scopes", required=True, help="comma-separated: read, punch, admin (e.g. read,punch)"
    )
    create.add_argument("--label", default="", help="what the key is for")
    _database_option(create)
    listing = k.add_parser("list", help="list an account's keys (never their secrets)")
    listing.add_argument("--account", required=True, help="account name")
    _database_option(listing)
    rotate = k.add_parser(
        "rotate",
        help="replace a key by a new one (same account, scopes, label); the old one is revoked",
    )
    rotate.add_argument("key_id")
    _database_option(rotate)
    revoke = k.add_parser("revoke", help="revoke a key: every server refuses it within a poll")
    revoke.add_argument("key_id")
    _database_option(revoke)


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
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder; written in full beside it, then renamed into place",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an --out folder that is not empty"
    )
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    p.add_argument("--engine", choices=("local", "dask"), default="local")
    p.add_argument("--scheduler", help="Dask scheduler address (default: local threads)")
    p.add_argument("--partitions", type=int, help="Dask partitions (default: by input size)")
    p.add_argument("--chunk-rows", type=int, default=500_000, help="rows per chunk")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--sort-within-trail",
        action="store_true",
        help="order each trail's rows by time before judging them (for exports whose times "
        "jitter; reads the whole input into memory first, about 60 bytes a row)",
    )


def _hide_from_process_list(secret: str) -> None:
    """Rewrites this process's command line (what ``ps`` and /proc/PID/cmdline
    show) without ``--api-keys``' value. setproctitle does it portably; the
    keys were visible only between exec and this call."""
    import setproctitle

    title = setproctitle.getproctitle()
    for part in {secret, *secret.split(",")}:
        if part.strip():
            title = title.replace(part.strip(), "***")
    setproctitle.setproctitle(title)


def _migrate(url: str | None, to: str | None) -> int:
    # Loaded by now, with the collector paused: _on_the_store runs this.
    from geopunch.adapters.db.store import HEAD_REVISION, make_engine, migrate

    setup_logging("INFO")
    engine = make_engine(database_url(url), pool_size=1)
    try:
        revision = migrate(engine, to or HEAD_REVISION)
    except ValueError as exc:
        _say(str(exc))
        return 2
    except NotImplementedError as exc:  # a revision without a way back; nothing was run
        _say(f"cannot go back to {to}: {exc}")
        return 2
    finally:
        engine.dispose()
    print(f"store at schema revision {revision}")
    return 0


def _say(said: str) -> None:
    """A command's plain message on stderr, after the log lines still
    waiting to be written (a server's log is written from a thread)."""
    close_logging()
    print(f"geopunch: {said}", file=sys.stderr)


def _on_the_store(command: Callable[[], int | None]) -> int:
    """Runs a command that opens the store; a store it cannot use (one a
    newer release migrated, a schema that does not exist) or cannot reach
    (not running, a wrong host or port, locked) stops it with a plain
    message rather than the driver's traceback of a hundred lines."""
    with lasting_imports():
        from geopunch.adapters.db.faults import explain
        from geopunch.adapters.db.store import StoreUnusable

    try:
        return command() or 0
    except StoreUnusable as exc:
        _say(str(exc))
        return 2
    except Exception as exc:
        said = explain(exc)
        if said is None:
            raise
        # 1, not 2: nothing is wrong with the command; run it again later.
        _say(said)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            config = Config.from_env(
                listen=args.listen,
                http_listen=args.http_listen,
                http_allow_origins=args.http_allow_origins,
                metrics_listen=args.metrics_listen,
                database_url=args.database_url,
                api_keys=args.api_keys,
                log_level=args.log_level,
                max_workers=args.max_workers,
                processes=args.processes,
                worker_timeout_seconds=args.worker_timeout_seconds,
                worker_start_timeout_seconds=args.worker_start_timeout_seconds,
                grace_seconds=args.grace_seconds,
                store_timeout_seconds=args.store_timeout_seconds,
                kernel_threads=args.kernel_threads,
                index_checkpoint=args.index_checkpoint,
                event_loop=args.event_loop,
                max_clock_skew_seconds=args.max_clock_skew_seconds,
                api_keys_file=args.api_keys_file,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
                tls_client_ca=args.tls_client_ca,
                receive_timeout_seconds=args.receive_timeout_seconds,
                max_streams_per_key=args.max_streams_per_key,
                webhook_allow_private=args.webhook_allow_private,
                nats_url=args.nats_url,
            )
        except ValueError as exc:
            _say(str(exc))
            return 2
        Config.forget_secrets()  # read once; no worker process inherits them
        if args.api_keys:
            _hide_from_process_list(args.api_keys)
        setup_logging(config.log_level, buffer_lines=config.log_buffer_lines)

        def ready(port: int, http: str = "") -> None:
            # One write: a reader may close the pipe after the first line.
            lines = f"geopunch serving on {config.listen.rpartition(':')[0]}:{port}\n"
            if http:
                lines += f"geopunch http on {http}\n"
            sys.stdout.write(lines)
            sys.stdout.flush()

        # grpc loads only when serving, and not in a supervisor: its workers
        # import the server in their fork server; the supervisor itself
        # only watches them.
        from geopunch.entrypoints.http_server import CannotListen

        serving: Callable[..., None]
        if config.processes > 1:
            from geopunch.entrypoints.supervisor import serve_processes as serving
        else:
            with lasting_imports():
                from geopunch.entrypoints.server import serve as serving
        try:
            return _on_the_store(functools.partial(serving, config, ready))
        except CannotListen as exc:
            _say(str(exc))
            return 2
        finally:
            # Here rather than at exit: a server forked by multiprocessing
            # (the tests' harness) leaves without running atexit.
            close_logging()
    if args.command == "migrate":
        return _on_the_store(lambda: _migrate(args.database_url, args.to))
    if args.command in ("accounts", "keys"):
        with lasting_imports():
            from geopunch.entrypoints.accounts_cli import run as run_accounts

        return _on_the_store(lambda: run_accounts(args))
    if args.command == "trails":
        try:
            with lasting_imports():
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
