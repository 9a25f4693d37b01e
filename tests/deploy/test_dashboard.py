"""The metric catalogue (docs/metrics.md) and the Grafana dashboard against the metrics the code registers.

The "Exported" table must list exactly the metrics the services register (name, type, labels), and every metric
the dashboard queries must be catalogued, so neither the docs nor the dashboard can name a metric that does not
exist without it being visible as "Planned".
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs/metrics.md").read_text()
DASHBOARD = REPO / "deploy/grafana/carina-dashboard.json"

# Modules that define metrics (grep Counter(/Histogram(/Gauge( under libs/ and services/).
METRIC_MODULES = ("libs.common.metrics", "services.envmgr.metrics", "services.gateway.metrics",
                  "services.policy.handlers.evaluate", "services.provisioner.monitor", "services.scheduler.metrics")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def doc_table(heading: str) -> dict[str, tuple[str, set[str]]]:
    section = DOC.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`carina_"):
            labels = set(re.findall(r"`([a-z_]+)`", cells[2]))
            rows[cells[0].strip("`")] = (cells[1], labels)
    return rows


def registered() -> dict[str, tuple[str, set[str]]]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    out: dict[str, tuple[str, set[str]]] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("carina_"):
            continue
        name = family.name + "_total" if family.type == "counter" else family.name
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        collector = REGISTRY._names_to_collectors.get(name)  # labels of metrics with no sample yet
        if collector is not None:
            labels |= set(getattr(collector, "_labelnames", ()))
        out[name] = (family.type, labels)
    return out


def test_catalogue_lists_exactly_the_registered_metrics() -> None:
    documented = doc_table("Exported")
    actual = registered()
    undocumented, missing = sorted(set(actual) - set(documented)), sorted(set(documented) - set(actual))
    assert not undocumented and not missing, (undocumented, missing)
    for name, (kind, labels) in actual.items():
        assert documented[name] == (kind, labels), name


def queried_metrics(dashboard: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\b(carina_[a-z_]+)", target["expr"]):
                for suffix in HISTOGRAM_SUFFIXES:
                    name = name.removesuffix(suffix)
                names.add(name)
    return names


def test_dashboard_parses_and_queries_only_catalogued_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    catalogued = set(doc_table("Exported"))
    queried = queried_metrics(dashboard)
    assert queried - catalogued == set()
    for template_var in dashboard["templating"]["list"]:
        for name in re.findall(r"\b(carina_[a-z_]+)", str(template_var.get("query", ""))):
            assert name in catalogued


def test_dashboard_covers_what_operators_watch() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queried = queried_metrics(dashboard)
    for needed in ("carina_handler_duration_seconds", "carina_messages_total", "carina_environments", "carina_vms",
                   "carina_scheduler_pool_allocated_vcpus", "carina_scheduler_requests",
                   "carina_policy_decisions_total"):
        assert needed in queried, needed
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["targets"], panel["title"]
