"""The pure core must not depend on transport or storage frameworks."""

from __future__ import annotations

import ast
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
