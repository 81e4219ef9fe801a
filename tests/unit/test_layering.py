"""The layers: the contracts in pyproject.toml hold, and the pure core
depends on no transport or storage framework."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import geopunch

FORBIDDEN = {"grpc", "grpc_status", "grpc_health", "sqlalchemy", "alembic", "google"}
PKG = Path(geopunch.__file__).parent


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
            if node.module.startswith("geopunch.v1"):
                roots.add("google")  # generated protobuf code
    return roots


def test_domain_and_geo_import_no_framework() -> None:
    files = [*(PKG / "domain").rglob("*.py"), *(PKG / "geo").rglob("*.py")]
    assert files
    offenders = {str(f.relative_to(PKG)): imported_roots(f) & FORBIDDEN for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_walker_sees_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import grpc\nfrom sqlalchemy import select\nfrom geopunch.v1 import x\n")
    assert {"grpc", "sqlalchemy", "google"} <= imported_roots(probe)


def test_the_import_contracts_hold() -> None:
    """import-linter's contracts (pyproject.toml): layers, a pure core, independent adapters."""
    root = PKG.parent.parent
    code = "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"
    done = subprocess.run(
        [sys.executable, "-c", code, "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout
