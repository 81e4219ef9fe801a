"""Every metric geopunch defines is documented, and the Grafana dashboard
queries only metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import geopunch.metrics  # noqa: F401  (registers the metrics)

ROOT = Path(__file__).resolve().parents[2]


def _defined() -> set[str]:
    """Names as the registry describes them (counters without ``_total``)."""
    return {
        name.removesuffix("_total")
        for name in REGISTRY._names_to_collectors
        if name.startswith("geopunch_")
        and not name.endswith(("_bucket", "_sum", "_count", "_created"))
    }


def test_every_metric_is_documented_and_the_dashboard_uses_real_ones() -> None:
    exposed = _defined()
    assert {"geopunch_calls", "geopunch_punches", "geopunch_commit_seconds"} <= exposed
    docs = (ROOT / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"`(geopunch_[a-z_]+)`", docs))
    documented = {n.removesuffix("_total") for n in documented}
    assert exposed <= documented, exposed - documented
    dashboard = json.loads((ROOT / "ops" / "grafana-dashboard.json").read_text())
    queried = {
        re.sub(r"_(bucket|sum|count|total)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"geopunch_[a-z_]+", target["expr"])
    }
    assert queried and queried <= exposed, queried - exposed
