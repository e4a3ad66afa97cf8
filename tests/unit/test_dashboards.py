"""Dashboards: unique uids and panel ids, the datasource variable everywhere, queries that Prometheus
parses (promtool) and that name only metrics the collector exposes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from qiancheng.collector.metrics import HELP
from tests.integration.helpers import require_tool

DASHBOARDS = sorted((Path(__file__).parents[2] / "dashboards").glob("*.json"))
_METRIC = re.compile(r"\bqiancheng_[a-z_]+")
_SUFFIXES = ("_bucket", "_count", "_sum")


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _queries(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def _grafana_to_promql(expr: str) -> str:
    """What Grafana sends: variables replaced (all values selected) and its interval macros filled in."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
    return re.sub(r"\$[a-z_]+", ".*", expr)


def test_there_is_a_dashboard() -> None:
    assert DASHBOARDS, "no dashboard JSON in dashboards/"


def test_uids_and_panel_ids_are_unique() -> None:
    uids = [_load(path)["uid"] for path in DASHBOARDS]
    assert len(uids) == len(set(uids))
    for path in DASHBOARDS:
        ids = [panel["id"] for panel in _load(path)["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel id"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_uses_the_datasource_variable(path: Path) -> None:
    dashboard = _load(path)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_name_only_exposed_metrics(path: Path) -> None:
    exposed = set(HELP)
    for expr in _queries(_load(path)):
        for name in _METRIC.findall(expr):
            base = next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), name)
            assert name in exposed or base in exposed, f"{name} is not a metric the collector exposes"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_parse_as_promql(path: Path, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    dashboard = _load(path)
    expressions = _queries(dashboard) + [
        v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"
    ]
    # label_values() is Grafana's, not PromQL: check the selector inside it.
    expressions = [re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", e) for e in expressions]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": _grafana_to_promql(e)} for i, e in enumerate(expressions)
    ]}]}
    file = tmp_path / "rules.yaml"
    file.write_text(yaml.safe_dump(rules))
    checked = subprocess.run([promtool, "check", "rules", str(file)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in checked.stdout
