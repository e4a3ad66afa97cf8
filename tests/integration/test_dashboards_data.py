"""Every dashboard query, as Grafana sends it, runs on a real Prometheus that scrapes a real collector fed
by real probes in two cities, and returns data.

Besides the city targets every measurement kind runs: download and upload (with latency under load)
and STAMP against the responder, HTTP against a stand-in CDN edge that answers with cache headers, and a
path trace of loopback (one hop).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboards.queries import PanelQuery, dashboard_files, expand, load, panel_queries, variable_queries
from tests.conftest import PYTHON, Processes
from tests.integration.cache_edge import cache_like_server
from tests.integration.helpers import Responder, free_udp_tcp_port, probe_config, wait_for
from tests.integration.timeseries import JudgingCollector, Prometheus, city_targets

CITIES = {"p-lishui": "lishui", "p-qiandongnan": "qiandongnan"}
RANGE_SECONDS, STEP_SECONDS = 60.0, 2.0


def _has_data(result: list[dict[str, Any]]) -> bool:
    for series in result:
        values = series.get("values") or [series.get("value")]
        if any(v is not None and v[1] not in ("NaN", "+Inf", "-Inf") for v in values):
            return True
    return False


def _run(prometheus: Prometheus, query: PanelQuery) -> list[dict[str, Any]]:
    expr = expand(query.expr, RANGE_SECONDS, STEP_SECONDS, scrape_seconds=1.0)
    if query.instant:
        return prometheus.query(expr)
    now = time.time()
    return prometheus.query_range(expr, now - 20, now, STEP_SECONDS)


@pytest.fixture(scope="module")
def fed_prometheus(tmp_path_factory: pytest.TempPathFactory) -> object:
    tmp_path = tmp_path_factory.mktemp("dashboards")
    processes = Processes(tmp_path)
    with cache_like_server() as cdn_object:
        yield from _fed(processes, tmp_path, cdn_object)


def _fed(processes: Processes, tmp_path: Path, cdn_object: str) -> Iterator[Prometheus]:
    try:
        responder = Responder(processes, stamp_port=free_udp_tcp_port())
        responder.start()
        # half-second windows, one transfer at a time per probe; loopback moves tens of Gbit/s, so a byte cap
        # low enough to matter would end each test before its latency-under-load probes ran
        bulk = "{interval: 10s, timeout: 1s, streams: 2, warmup: 0s, window: 500ms, max_seconds: 3s, max_bytes: 4GiB}"
        extra = (
            f"  - {{name: edge-bulk, address: '127.0.0.1:{responder.http_port}', class: edge, kinds: {{download: {bulk}, upload: {bulk}}}}}\n"
            f"  - {{name: edge-stamp, address: '127.0.0.1:{responder.stamp_port}', class: edge, kinds: {{stamp: {{interval: 1s, count: 5, packet_interval: 20ms, timeout: 500ms}}}}}}\n"
            f"  - {{name: cdn-edge, address: '{cdn_object}', class: cdn, kinds: [http]}}\n"
            "  - {name: edge-path, address: 127.0.0.1, class: edge, kinds: {path: {interval: 2s, rounds: 2, "
            "round_interval: 100ms, timeout: 500ms, max_ttl: 4}}}\n"
        )
        tokens = {probe: f"token-{probe}-0001" for probe in CITIES}
        collector = JudgingCollector(processes, tmp_path, tokens=tokens)
        collector.start()
        prometheus = Prometheus(processes, tmp_path, targets=[f"127.0.0.1:{collector.port}"])
        prometheus.start()
        for probe, city in CITIES.items():
            config = probe_config(tmp_path / f"{probe}.yaml", probe, tokens[probe], collector, city_targets(responder) + extra,
                                  city=city)  # fmt: skip
            processes.start(PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(config), name=probe)
        wait_for(lambda: prometheus.query("qiancheng_sla_breach"), 40, "SLA judgements scraped", step=0.5)
        wait_for(lambda: prometheus.query("rate(qiancheng_rtt_seconds_count[4s]) > 0"), 30, "two scrapes of RTT", step=0.5)
        for direction in ("download", "upload"):  # every probe's first transfer, within its 10 s phase
            wait_for(lambda d=direction: len(prometheus.query(f'qiancheng_responsiveness_rpm{{direction="{d}"}}')) == len(CITIES),
                     40, f"{direction} results of every probe", step=0.5)  # fmt: skip
        time.sleep(4)  # a few more scrapes, so that every rate window holds several samples
        yield prometheus
    finally:
        processes.stop_all()


QUERIES = [query for path in dashboard_files() for query in panel_queries(load(path))]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: f"{q.dashboard}:{q.panel_id}{q.ref}")
def test_panel_query_returns_data(fed_prometheus: Prometheus, query: PanelQuery) -> None:
    result = _run(fed_prometheus, query)  # Prometheus refusing the query fails here
    assert _has_data(result), f"{query.title!r} ({query.ref}) returned no data: {query.expr}"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_variables_list_values(fed_prometheus: Prometheus, path: Path) -> None:
    for selector in variable_queries(load(path)):
        assert fed_prometheus.query(expand(selector, RANGE_SECONDS, STEP_SECONDS)), selector


def test_scorecard_has_one_row_per_city_with_each_class(fed_prometheus: Prometheus) -> None:
    scorecard = load(next(p for p in dashboard_files() if p.name == "qiancheng-city-scorecard.json"))
    [table] = [panel for panel in scorecard["panels"] if panel["title"].startswith("Scorecard")]
    for target in table["targets"][:8]:  # RTT p50/p95 to edge, cloud pool, CDN, national hub
        result = fed_prometheus.query(expand(target["expr"], RANGE_SECONDS, STEP_SECONDS, scrape_seconds=1.0))
        assert sorted(series["metric"]["city"] for series in result) == sorted(CITIES.values()), target["expr"]
