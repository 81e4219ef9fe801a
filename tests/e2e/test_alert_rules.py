"""ops/prometheus-alerts.yml: every rule is complete, its expression parses
as PromQL (promql-parser, the Rust parser's Python binding), and every
geopunch metric it names is one a running server exports. An alert on a
misspelled metric never fires, and nothing says so."""

from __future__ import annotations

from pathlib import Path

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

RULES = Path(__file__).resolve().parents[2] / "ops" / "prometheus-alerts.yml"

#: Sample names a family of each type exports beside its own name.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def _names(expr: str) -> set[str]:
    found: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def test_every_rule_parses_and_names_only_exported_metrics(http: httpx.Client) -> None:
    exported = {
        family.name + suffix
        for family in text_string_to_metric_families(http.get("/metrics").text)
        for suffix in _SUFFIXES.get(family.type, ("",))
    }
    (group,) = yaml.safe_load(RULES.read_text())["groups"]
    alerts = [rule["alert"] for rule in group["rules"]]
    assert len(alerts) == len(set(alerts)) >= 9
    named: set[str] = set()
    for rule in group["rules"]:
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        names = _names(rule["expr"])
        assert names, rule["alert"]
        ours = {n for n in names if n.startswith("geopunch_")}
        assert ours <= exported, (rule["alert"], ours - exported)
        named |= ours
    # The store, the sink, webhooks, workers, the index and the background
    # loops each have one.
    for metric in (
        "geopunch_store_unavailable_total",
        "geopunch_event_lag_seconds",
        "geopunch_worker_restarts_total",
        "geopunch_index_current_timestamp_seconds",
        "geopunch_calls_total",
        "geopunch_background_failures_total",
    ):
        assert metric in named, metric


def test_a_broken_expression_does_not_parse() -> None:
    with pytest.raises(ValueError, match="parenthesis"):
        promql_parser.parse("sum by (reason (rate(geopunch_calls_total[5m]))")
