"""The Grafana dashboard and the README's Metrics table name only metrics the processes export.

The list of exported metrics is taken from the code — the collectors ``bus.metrics`` (every
handler and the saga runner) and ``gateway.metrics`` register with prometheus_client — so a
renamed metric breaks the dashboard's test, not an operator's alert.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import bus.metrics
import gateway.metrics
from tests.cli.conftest import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "soma.json"
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}
PROMQL_NAME = re.compile(r"\b(soma_[a-zA-Z0-9_:]*)")


def exported() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every ``soma_`` metric family the processes register: its type and its labels."""
    assert bus.metrics.MESSAGES and gateway.metrics.REQUESTS  # both modules registered
    families = {}
    for collector in list(REGISTRY._collector_to_names):
        if isinstance(collector, MetricWrapperBase) and collector._name.startswith("soma_"):
            families[collector._name] = (str(collector._type), tuple(collector._labelnames))
    return families


def series_names() -> set[str]:
    """The names a PromQL query may use: counters' ``_total``, histograms' parts, gauges."""
    return {name + s for name, (kind, _) in exported().items() for s in SUFFIXES[kind]}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows hold their own
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]


def test_the_dashboard_is_a_grafana_dashboard_with_a_prometheus_source(
    dashboard: dict[str, Any],
) -> None:
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    (source,) = dashboard["templating"]["list"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    for panel in _panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_panel_query_names_a_metric_the_processes_export(
    dashboard: dict[str, Any],
) -> None:
    known = series_names()
    queries = _queries(dashboard)
    assert queries
    for query in queries:
        names = PROMQL_NAME.findall(query)
        assert names, f"no soma metric in {query!r}"
        assert set(names) <= known, f"{query!r} names {set(names) - known}"


def test_every_exported_metric_has_a_panel(dashboard: dict[str, Any]) -> None:
    used = {n for q in _queries(dashboard) for n in PROMQL_NAME.findall(q)}
    for name, (kind, _) in exported().items():
        assert used & {name + s for s in SUFFIXES[kind]}, f"{name} is on no panel"


def test_the_query_check_catches_a_misspelt_metric() -> None:
    assert not set(PROMQL_NAME.findall("rate(soma_http_request_total[5m])")) <= series_names()


def _readme_metrics() -> dict[str, tuple[str, set[str]]]:
    """The README's Metrics table: name as scraped, type, and the labels it names."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Metrics\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(soma_\w+)` \| (\w+) \| ([^|]*) \|", section, re.MULTILINE)
    return {name: (kind, set(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


def test_the_readme_metrics_table_lists_every_exported_metric_with_its_type_and_labels() -> None:
    expected = {
        name + ("_total" if kind == "counter" else ""): (kind, set(labels))
        for name, (kind, labels) in exported().items()
    }
    assert _readme_metrics() == expected
