"""The CLI's small promises: `geopunch trails` without its extra names the extra;
`geopunch --version` prints the installed version."""

from __future__ import annotations

import sys

import pytest

from geopunch.entrypoints.cli import main


def test_trails_without_its_extra_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "geopunch.entrypoints.trails_cli", raising=False)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now fails
    code = main(["trails", "in.csv", "--fences", "f.geojson", "--out", "out"])
    err = capsys.readouterr().err
    assert code == 2
    assert "pip install 'geopunch[trails]'" in err and "pyarrow" in err


def test_version_prints_the_installed_version() -> None:
    import importlib.metadata
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "geopunch", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"geopunch {importlib.metadata.version('geopunch')}"
