"""Judgement passes over a real SQLite store: windows, no data, hysteresis across passes, the indexed query,
and GET /api/v1/sla and /metrics of a collector app judging that store."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from qiancheng.collector.app import make_app
from qiancheng.collector.config import load_collector_config
from qiancheng.collector.sla.judge import Judge, Judgement
from qiancheng.collector.sla.profiles import load_sla_profiles
from qiancheng.collector.store.sqlite import SERIES_SQL, WINDOW_SQL, SqliteStore
from qiancheng.core.result import Result, Target
from qiancheng.core.wire import Batch
from tests.integration.helpers import require_tool

S = 1_000_000_000  # ns per second
NOW = 1_800_000_000 * S
PROFILES = """
profiles:
  edge_local:
    objectives:
      rtt_p95: {max: 10ms}
      loss: {max: 1%}
      download: {min: 500Mbit/s}
      availability: {min: 90%}
assign:
  - match: {target_class: edge}
    profiles: [edge_local]
"""


def icmp(seq: int, age_seconds: float, rtt: float, lost: int = 0, target: str = "edge-1") -> Result:
    samples: list[float | None] = [rtt] * (10 - lost) + [None] * lost
    return Result(kind="icmp", target=Target(name=target, address="198.18.0.1", target_class="edge"),
                  start_ns=NOW - int(age_seconds * S), duration_seconds=0.1, success=lost < 10,
                  figures={"packets_sent": 10.0, "packets_received": float(10 - lost)}, samples=samples, seq=seq)  # fmt: skip


async def store_results(path: Path, probe: str, city: str, results: list[Result]) -> None:
    store = await SqliteStore.open(str(path))
    try:
        batch = Batch(probe_id=probe, batch_id=f"batch-{probe}-{results[0].seq:06d}", results=results, city=city, isp="ct")
        await store.store_batch(batch, NOW)
    finally:
        await store.close()


def profiles_file(tmp_path: Path) -> Path:
    path = tmp_path / "sla.yaml"
    path.write_text(PROFILES)
    return path


def by_objective(judgements: list[Judgement]) -> dict[tuple[str, str, str], Judgement]:
    return {(j.series.probe, j.series.kind, j.objective.name): j for j in judgements}


async def test_windows_values_and_no_data_from_the_store(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    # within the last 10 s: 4 ms RTTs and 1 lost of 10; between 10 s and 60 s ago: 20 ms RTTs, none lost
    await store_results(db, "p1", "lishui", [icmp(1, 50, 0.020), icmp(2, 30, 0.020), icmp(3, 5, 0.004, lost=1)])
    reader = await SqliteStore.open(str(db))
    try:
        data = await reader.windows(NOW - 60 * S, NOW)
    finally:
        await reader.close()
    judge = Judge(load_sla_profiles(profiles_file(tmp_path)), [10.0, 60.0], open_after=2, close_after=2)
    found = by_objective(judge.judge(data, NOW))
    rtt = found[("p1", "icmp", "rtt_p95")]
    assert [w.value for w in rtt.windows] == [pytest.approx(0.004), pytest.approx(0.020)]
    assert [w.results for w in rtt.windows] == [1, 3]
    loss = found[("p1", "icmp", "loss")]
    assert [w.value for w in loss.windows] == [pytest.approx(0.1), pytest.approx(1 / 30)]
    assert (rtt.state.status, loss.state.status, loss.state.bad_streak) == ("ok", "ok", 1)
    download = found[("p1", "download", "download")]  # no download test was ever stored
    assert download.state.status == "no_data" and [w.value for w in download.windows] == [None, None]
    assert (rtt.series.city, rtt.series.isp, rtt.series.target_class) == ("lishui", "ct", "edge")


async def test_hysteresis_across_passes_opens_and_closes(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    await store_results(db, "p1", "lishui", [icmp(1, 1, 0.020)])  # 20 ms > 10 ms
    judge = Judge(load_sla_profiles(profiles_file(tmp_path)), [10.0], open_after=2, close_after=2)
    reader = await SqliteStore.open(str(db))
    try:
        statuses = []
        for second in range(2):
            now = NOW + second * S
            judgements = judge.judge(await reader.windows(now - 10 * S, now), now)
            statuses.append(by_objective(judgements)[("p1", "icmp", "rtt_p95")].state.status)
        await store_results(db, "p1", "lishui", [icmp(2, -15, 0.002)])  # a good test 15 s later
        for second in range(16, 18):  # the bad one has left the 10 s window: two good windows close it
            now = NOW + second * S
            judgements = judge.judge(await reader.windows(now - 10 * S, now), now)
            statuses.append(by_objective(judgements)[("p1", "icmp", "rtt_p95")].state.status)
    finally:
        await reader.close()
    assert statuses == ["ok", "breach", "breach", "ok"]


async def test_window_queries_use_the_series_index(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    await store_results(db, "p1", "lishui", [icmp(1, 1, 0.002)])
    with sqlite3.connect(db) as connection:
        plan = " ".join(str(row[-1]) for row in connection.execute("EXPLAIN QUERY PLAN " + WINDOW_SQL, (1, 0, NOW)))
        assert "USING INDEX records_series (series=? AND start_ns>? AND start_ns<?)" in plan
        series_plan = " ".join(str(row[-1]) for row in connection.execute("EXPLAIN QUERY PLAN " + SERIES_SQL, (0,)))
        assert "records" not in series_plan  # the series table alone: no result is read to list the series


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    db = tmp_path / "c.db"
    await store_results(db, "p1", "lishui", [icmp(1, 1, 0.002, lost=5)])
    await store_results(db, "p2", "qiandongnan", [icmp(1, 1, 0.003, target="edge-2")])
    profiles_file(tmp_path)
    config_path = tmp_path / "collector.yaml"
    config_path.write_text(f"store: {{path: {db}}}\nsla: {{profiles: sla.yaml, windows: [10s, 1m], interval: 100ms, "
                           "open_after: 1, close_after: 1}\n")  # fmt: skip
    config, _ = load_collector_config(config_path)
    clock: Callable[[], int] = lambda: NOW + S  # noqa: E731 - a fixed clock: the results stay in the window
    test_client: TestClient[web.Request, web.Application] = TestClient(TestServer(make_app(config, clock=clock)))
    await test_client.start_server()
    try:
        for _ in range(100):  # the first pass runs as the app starts
            if (await (await test_client.get("/api/v1/sla")).json())["judged_ns"]:
                break
            await asyncio.sleep(0.05)
        yield test_client
    finally:
        await test_client.close()


async def test_api_filters_and_reports_per_window_values_and_since(client: TestClient[web.Request, web.Application]) -> None:
    body = await (await client.get("/api/v1/sla", params={"probe": "p1", "profile": "edge_local"})).json()
    assert body["judged_ns"] == NOW + S
    entries = {(e["kind"], e["indicator"]): e for e in body["objectives"]}
    assert {e["probe"] for e in body["objectives"]} == {"p1"}
    loss = entries[("icmp", "loss")]
    assert loss["status"] == "breach" and loss["since_ns"] == NOW + S and loss["bound"] == "max"
    assert [(w["window"], w["value"], w["results"]) for w in loss["windows"]] == [("10s", 0.5, 1), ("1m", 0.5, 1)]
    assert entries[("download", "download")]["status"] == "no_data"
    city = await (await client.get("/api/v1/sla", params={"city": "qiandongnan", "target": "edge-2"})).json()
    assert {(e["probe"], e["target"]) for e in city["objectives"]} == {("p2", "edge-2")}
    assert (await (await client.get("/api/v1/sla", params={"isp": "cm"})).json())["objectives"] == []


@pytest.mark.parametrize(
    ("query", "field", "reason"),
    [({"profile": "gold"}, "profile", "unknown profile 'gold'"), ({"site": "x"}, "site", "unknown query parameter 'site'")],
)
async def test_api_refuses_bad_filters_with_json(client: TestClient[web.Request, web.Application], query: dict[str, str], field: str, reason: str) -> None:
    response = await client.get("/api/v1/sla", params=query)
    assert response.status == 400
    body = await response.json()
    assert body["field"] == field and reason in body["error"]


def samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {frozenset(s.labels.items()): s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name}


async def test_metrics_expose_breach_indicator_and_no_data_and_pass_promtool(client: TestClient[web.Request, web.Application]) -> None:
    text = await (await client.get("/metrics")).text()
    series = {"probe": "p1", "city": "lishui", "isp": "ct", "target": "edge-1", "target_class": "edge", "profile": "edge_local"}
    breach = samples(text, "qiancheng_sla_breach")
    assert breach[frozenset({**series, "kind": "icmp", "indicator": "loss"}.items())] == 1.0
    assert breach[frozenset({**series, "kind": "icmp", "indicator": "rtt_p95"}.items())] == 0.0
    indicator = samples(text, "qiancheng_sla_indicator")
    assert indicator[frozenset({**series, "kind": "icmp", "indicator": "loss", "window": "10s"}.items())] == 0.5
    download = frozenset({**series, "kind": "download", "indicator": "download"}.items())
    assert samples(text, "qiancheng_sla_no_data")[download] == 1.0
    assert download not in breach  # no data: neither a breach (1) nor a pass (0)
    threshold = samples(text, "qiancheng_sla_threshold")
    assert threshold[frozenset({"profile": "edge_local", "indicator": "download", "bound": "min"}.items())] == 5e8
    promtool = require_tool("promtool")
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr


async def test_api_says_when_judgement_is_not_configured(tmp_path: Path) -> None:
    config_path = tmp_path / "collector.yaml"
    config_path.write_text(f"store: {{path: {tmp_path / 'c.db'}}}\n")
    config, _ = load_collector_config(config_path)
    async with TestClient(TestServer(make_app(config))) as unconfigured:
        response = await unconfigured.get("/api/v1/sla")
        assert response.status == 404
        assert "sla.profiles" in (await response.json())["error"]
