"""The server's modules load with the cyclic collector paused and end up
frozen (``process.lasting_imports``): in a single process and in the fork
server of ``serve --processes``."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap

from geopunch.entrypoints.process import lasting_imports


def test_what_is_made_inside_is_frozen_and_the_collector_restored() -> None:
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    with lasting_imports():
        assert not gc.isenabled()
        made = [[i] for i in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen + len(made)
    gc.disable()
    try:
        with lasting_imports():
            pass
        assert not gc.isenabled()  # a collector the caller had paused stays paused
    finally:
        gc.enable()


# Counts the collections that ran while ``module`` was loading (its spec
# says so until it is loaded), then runs ``code``.
_PROBE = textwrap.dedent(
    """
    import gc, json, sys

    during = []

    def count(phase, info):
        module = sys.modules.get({module!r})
        spec = getattr(module, "__spec__", None)
        if phase == "start" and getattr(spec, "_initializing", False):
            during.append(info["generation"])

    gc.callbacks.append(count)
    {code}
    print(json.dumps({{
        "collections": len(during),
        "frozen": gc.get_freeze_count(),
        "enabled": gc.isenabled(),
    }}))
    """
)


def _probe(code: str, module: str = "geopunch.entrypoints.server") -> dict[str, int]:
    run = subprocess.run(
        [sys.executable, "-c", _PROBE.format(code=code, module=module)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    found: dict[str, int] = json.loads(run.stdout.splitlines()[-1])
    return found


def test_the_fork_servers_preload_runs_no_collection_and_freezes_it_all() -> None:
    found = _probe("import geopunch.entrypoints.preload")
    assert found["collections"] == 0
    assert found["enabled"]
    assert found["frozen"] > 100_000  # numpy, numba, SQLAlchemy, FastAPI, grpc


def test_serve_imports_the_server_with_no_collection() -> None:
    # A store that cannot be reached: the command ends after the import,
    # with its plain message.
    found = _probe(
        "from geopunch.entrypoints.cli import main\n"
        "code = main(['serve', '--listen', '127.0.0.1:0', '--http-listen', 'off',"
        " '--api-keys', 'k' * 20,"
        " '--database-url', 'postgresql+psycopg://nobody@127.0.0.1:1/none'])\n"
        "assert code == 1, code"
    )
    assert found["collections"] == 0
    assert found["frozen"] > 100_000


def test_migrate_imports_the_store_with_no_collection() -> None:
    found = _probe(
        "from geopunch.entrypoints.cli import main\n"
        "code = main(['migrate',"
        " '--database-url', 'postgresql+psycopg://nobody@127.0.0.1:1/none'])\n"
        "assert code == 1, code",
        module="geopunch.adapters.db.store",
    )
    assert found["collections"] == 0
    assert found["frozen"] > 50_000  # SQLAlchemy, alembic's needs
