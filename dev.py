#!/usr/bin/env python3
"""Developer entry point; needs only Python 3.11+ and pip.

    python3 dev.py serve [--listen HOST:PORT ...]   set up, then run the server
    python3 dev.py test  [PYTEST ARGS ...]          set up, then run the test suite
    python3 dev.py lint                             ruff check and format --check, mypy,
                                                    lint-imports
    python3 dev.py protos                           regenerate the stubs (server's, client's)
    python3 dev.py bench [PYTEST ARGS ...]          run the pytest-benchmark suite in bench/
    python3 dev.py run SCRIPT [ARGS ...]            run a script with the project's interpreter

Set-up creates .venv/, installs the project with its dev extra there (again
only when pyproject.toml changed), and regenerates the gRPC code if it is
missing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".geopunch-installed"
DEV_API_KEY = "geopunch-dev-key"
PYTHON_TREES = ("src", "tests", "bench", "scripts", "clients/python", "dev.py")


def setup() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may run on an old python3
        sys.exit("geopunch needs Python 3.11 or newer")
    if not PY.exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    fresh = False
    if not STAMP.exists() or STAMP.read_text() != wanted:
        print("installing geopunch and its dependencies into .venv ...", flush=True)
        pip = [str(PY), "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "install", "-e", f"{ROOT}[dev]"], check=True)
        fresh = True
    if not (ROOT / "src/geopunch/v1/geofences_pb2.py").exists():
        subprocess.run([str(PY), str(ROOT / "scripts/gen_protos.py")], check=True)
    if fresh:
        # Once per install, so that the first server does not spend its
        # start (10-20 s, answering "starting") compiling them.
        print("compiling the fence engine's kernels into numba's cache ...", flush=True)
        if warm_up() != 0:
            sys.exit("the fence engine's kernels did not compile")
        STAMP.write_text(wanted)


def warm_up() -> int:
    """numba's kernels compiled into its disk cache (about 1 s when warm)."""
    return run([str(PY), "-c", "from geopunch.geo.engine import warm_up; warm_up()"])


def run(args: list[str], env: dict[str, str] | None = None) -> int:
    return subprocess.run(args, cwd=ROOT, env=env).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"serve", "test", "lint", "protos", "bench", "run"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    setup()
    if command == "serve":
        env = dict(os.environ)
        if "GEOPUNCH_API_KEYS" not in env and "--api-keys" not in rest:
            env["GEOPUNCH_API_KEYS"] = DEV_API_KEY
            print(
                f"development API key: {DEV_API_KEY}  "
                "(gRPC: 'x-api-key' metadata; HTTP: the X-API-KEY header)"
            )
        (ROOT / "var").mkdir(exist_ok=True)
        env.setdefault("GEOPUNCH_DATABASE_URL", f"sqlite:///{ROOT / 'var' / 'geopunch.db'}")
        os.chdir(ROOT)
        os.execve(str(PY), [str(PY), "-m", "geopunch", "serve", *rest], env)
    if command == "test":
        # One worker per core (pytest-xdist), each test file whole on one
        # worker so that a file's shared server starts once: most of the
        # suite waits on server processes (bench/README.md has the times).
        # `-n 0` runs it in this process.
        spread = (
            []
            if any(a.startswith(("-n", "--numprocesses")) for a in rest)
            else ["-n", "auto", "--dist", "loadfile"]
        )
        # numba's kernels compiled into its disk cache once, before the
        # workers start: in a fresh clone every worker and the first servers
        # would otherwise each compile them at once (16 s of CPU apiece).
        # Set-up compiles them after an install; again here after an edit.
        warm = warm_up()
        if warm != 0:
            return warm
        return run([str(PY), "-m", "pytest", *spread, *rest])
    if command == "bench":
        return run([str(PY), "-m", "pytest", "bench", "-p", "no:cacheprovider", *rest])
    if command == "run":
        return run([str(PY), *rest])
    if command == "protos":
        return run([str(PY), "scripts/gen_protos.py"])
    # lint
    checks = [
        [str(BIN / "ruff"), "check", *PYTHON_TREES],
        [str(BIN / "ruff"), "format", "--check", *PYTHON_TREES],
        [str(BIN / "mypy"), "src"],
        [str(BIN / "mypy"), "tests"],
        # The client package on its own (its stubs' names clash with the server's).
        [str(BIN / "mypy"), "--strict", "--exclude", "/v1/", "clients/python/src"],
        [str(BIN / "lint-imports")],
    ]
    return max(run(c) for c in checks)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
