"""Dashboards: generated files up to date, unique uids and panel ids, the datasource variable everywhere,
queries that Prometheus parses (promtool) and that name only metrics the collector exposes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from dashboards.generate import build_all
from dashboards.queries import dashboard_files, expand, load, panel_queries, variable_queries
from qiancheng.collector.metrics import HELP
from qiancheng.collector.sla.exposition import SLA_HELP
from tests.integration.helpers import require_tool

DASHBOARDS = dashboard_files()
_METRIC = re.compile(r"\bqiancheng_[a-z0-9_]+")
_SUFFIXES = ("_bucket", "_count", "_sum")
_TITLES = {"qiancheng · Fleet", "qiancheng · City scorecard", "qiancheng · Target detail", "qiancheng · SLA"}


def test_committed_dashboards_are_what_the_code_generates() -> None:
    generated = build_all()
    assert sorted(generated) == [path.name for path in DASHBOARDS]
    for path in DASHBOARDS:
        assert path.read_text() == generated[path.name], f"{path.name}: run python dashboards/generate.py"


def test_the_four_noc_dashboards_exist_with_unique_uids_and_panel_ids() -> None:
    dashboards = [load(path) for path in DASHBOARDS]
    assert {d["title"] for d in dashboards} == _TITLES
    uids = [d["uid"] for d in dashboards]
    assert len(uids) == len(set(uids))
    for dashboard in dashboards:
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{dashboard['uid']}: duplicate panel id"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_and_query_uses_the_datasource_variable(path: Path) -> None:
    dashboard = load(path)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}", variable["name"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        # a panel fits the 24-unit grid
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_variables_used_by_queries_are_defined(path: Path) -> None:
    dashboard = load(path)
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    for query in panel_queries(dashboard):
        for name in re.findall(r"\$(\w+)", query.expr):
            assert name.startswith("__") or name in defined, f"{query.title}: ${name} is not a variable"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_name_only_exposed_metrics(path: Path) -> None:
    exposed = set(HELP) | set(SLA_HELP)
    for query in panel_queries(load(path)):
        for name in _METRIC.findall(query.expr):
            base = next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), name)
            assert name in exposed or base in exposed, f"{name} is not a metric the collector exposes"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_parse_as_promql(path: Path, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    dashboard = load(path)
    expressions = [q.expr for q in panel_queries(dashboard)] + variable_queries(dashboard)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expand(e, 3600, 15)} for i, e in enumerate(expressions)
    ]}]}  # fmt: skip
    file = tmp_path / "rules.yaml"
    file.write_text(yaml.safe_dump(rules))
    checked = subprocess.run([promtool, "check", "rules", str(file)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in checked.stdout


def test_expand_fills_grafana_macros_and_variables() -> None:
    expr = 'rate(x{city=~"$city", probe=~"${probe}"}[$__rate_interval]) + avg_over_time(y[$__range:$__interval])'
    assert expand(expr, 3600, 30, scrape_seconds=1) == 'rate(x{city=~".*", probe=~".*"}[31s]) + avg_over_time(y[3600s:30s])'
