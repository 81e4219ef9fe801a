"""``geopunch accounts ...`` and ``geopunch keys ...``: accounts and API keys,
managed on the server's store (the same ``--database-url`` as ``serve``)."""

from __future__ import annotations

import argparse
import sys
import time

from geopunch.adapters.db.store import SqlUnitOfWorkFactory, make_engine, migrate
from geopunch.config import database_url
from geopunch.domain.accounts import ApiKey, parse_scopes, scopes_text
from geopunch.domain.errors import DomainError
from geopunch.service import accounts


class _SystemClock:
    def now(self) -> float:
        return time.time()


def _store(args: argparse.Namespace) -> SqlUnitOfWorkFactory:
    engine = make_engine(database_url(args.database_url), pool_size=1)
    migrate(engine)
    return SqlUnitOfWorkFactory(engine)


def _when(ts: int | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _print_key(key: ApiKey) -> None:
    print(f"key {key.id}  account {key.account_id}  scopes {scopes_text(key.scopes)}")
    if key.label:
        print(f"label {key.label}")


def run(args: argparse.Namespace) -> int:
    try:
        uows = _store(args)
        clock = _SystemClock()
        if args.command == "accounts":
            if args.action == "create":
                account = accounts.create_account(uows, args.name)
                print(f"account {account.name} created (id {account.id})")
            else:
                for a in accounts.list_accounts(uows):
                    print(f"{a.id}\t{a.name}\t{_when(a.created_at)}")
            return 0
        if args.action == "create":
            account = accounts.account_named(uows, args.account)
            issued = accounts.create_key(
                uows, clock, account.id, parse_scopes(args.scopes), args.label
            )
            _print_key(issued.key)
            print("the secret below is shown this once; only a salted hash of it is kept:")
            print(issued.secret)
        elif args.action == "list":
            account = accounts.account_named(uows, args.account)
            print("id\tscopes\tcreated\trevoked\tlabel")
            for key in accounts.list_keys(uows, account.id):
                print(
                    f"{key.id}\t{scopes_text(key.scopes)}\t{_when(key.created_at)}\t"
                    f"{_when(key.revoked_at)}\t{key.label}"
                )
        elif args.action == "rotate":
            issued = accounts.rotate_key(uows, clock, args.key_id)
            print(f"key {args.key_id} revoked")
            _print_key(issued.key)
            print("the secret below is shown this once; only a salted hash of it is kept:")
            print(issued.secret)
        else:
            key = accounts.revoke_key(uows, args.key_id)
            print(f"key {key.id} revoked")
        return 0
    except DomainError as exc:
        print(f"geopunch: {exc.message}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"geopunch: {exc}", file=sys.stderr)
        return 2
