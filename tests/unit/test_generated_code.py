"""The checked-in generated code (the server's stubs and the client
package's) equals what scripts/gen_protos.py produces now."""

from __future__ import annotations

import filecmp
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("generate", "package", "checked_in"),
    [
        ("generate", "geopunch/v1", ROOT / "src/geopunch/v1"),
        ("generate_client", "geopunch_client/v1", ROOT / "clients/python/src/geopunch_client/v1"),
    ],
)
def test_generated_code_is_fresh(
    tmp_path: Path, generate: str, package: str, checked_in: Path
) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts/gen_protos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    fresh = {p.name for p in getattr(module, generate)(tmp_path)}
    on_disk = {p.name for p in checked_in.iterdir() if p.is_file()}
    assert fresh == on_disk, "run `python3 dev.py protos` and commit the result"
    stale = [
        n
        for n in sorted(fresh)
        if not filecmp.cmp(tmp_path / package / n, checked_in / n, shallow=False)
    ]
    assert stale == [], f"stale generated files {stale}: run `python3 dev.py protos`"
