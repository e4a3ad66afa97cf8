"""The SLA window cache: pruning through the indexes, what it vouches for (complete_since), failed
writes, and a collector app on the influx backend judging from it (the InfluxDB side is a SQLite store
here; tests/integration/test_sla_influx.py runs the real one)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from qiancheng.collector.app import STORE_KEY, make_app
from qiancheng.collector.config import StoreConfig, load_collector_config
from qiancheng.collector.sla.cache import PRUNE_MARGIN_SECONDS, WindowCache
from qiancheng.collector.sla.judge import Judge
from qiancheng.collector.sla.profiles import load_sla_profiles
from qiancheng.collector.store import BatchOutcome, Store, StoreError
from qiancheng.collector.store.sqlite import _PRUNE_SERIES, SqliteStore
from qiancheng.core.result import Result, Target
from qiancheng.core.wire import Batch, Sent, encode_batch

S = 1_000_000_000
NOW = 1_800_000_000 * S
HOUR = 3600.0
PROFILES = """
profiles:
  edge_local:
    objectives:
      rtt_p95: {max: 10ms}
      availability: {min: 90%}
assign:
  - match: {target_class: edge}
    profiles: [edge_local]
"""


def icmp(seq: int, start_ns: int, rtt: float = 0.004, target: str = "edge-1", success: bool = True) -> Result:
    return Result(kind="icmp", target=Target(name=target, address="198.18.0.1", target_class="edge"),
                  start_ns=start_ns, duration_seconds=0.1, success=success,
                  figures={"packets_sent": 2.0, "packets_received": 2.0 if success else 0.0},
                  samples=[rtt, rtt] if success else [None, None], seq=seq)  # fmt: skip


def batch(probe: str, batch_id: str, results: list[Result]) -> Batch:
    return Batch(probe_id=probe, batch_id=f"batch-{batch_id}", city="lishui", isp="ct", results=results)


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return list(db.execute(sql))


async def test_prune_deletes_what_no_window_reaches_through_the_indexes(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    cache = await WindowCache.open(str(path), HOUR, NOW - 3 * 3600 * S)
    keep = HOUR + PRUNE_MARGIN_SECONDS
    try:
        old, edge, young = NOW - int((keep + 60) * S), NOW - int(keep * S), NOW - 60 * S
        # received when measured, as probes push at once
        await cache.add(batch("p1", "b-old", [icmp(1, old), icmp(2, old, target="edge-2")]), old)
        await cache.add(batch("p1", "b-edge", [icmp(3, edge)]), edge)
        await cache.add(batch("p1", "b-young", [icmp(4, young)]), young)
        await cache.add(batch("p2", "b-p2", [icmp(1, old + S)]), old + S)  # a series that went silent
        removed = await cache.prune(NOW)
    finally:
        await cache.close()
    assert removed == 3 and cache.pruned == 3
    assert rows(path, "SELECT probe_id, seq FROM results ORDER BY probe_id, seq") == [("p1", 3), ("p1", 4)]
    # the silent series and its batch are gone too: nothing in the cache grows with time
    assert rows(path, "SELECT probe_id, target_name FROM series") == [("p1", "edge-1")]
    assert rows(path, "SELECT batch_id FROM batches ORDER BY received_ns") == [("batch-b-edge",), ("batch-b-young",)]
    with sqlite3.connect(path) as db:
        plan = " ".join(str(r[-1]) for r in db.execute("EXPLAIN QUERY PLAN " + _PRUNE_SERIES, (1, NOW)))
        assert "USING INDEX records_series (series=? AND start_ns<?)" in plan
        plan = " ".join(str(r[-1]) for r in db.execute("EXPLAIN QUERY PLAN DELETE FROM batches WHERE received_ns < ?", (NOW,)))
        assert "USING COVERING INDEX batches_received (received_ns<?)" in plan


async def test_results_older_than_every_window_are_not_written(tmp_path: Path) -> None:
    cache = await WindowCache.open(str(tmp_path / "cache.db"), 600.0, NOW)
    try:
        # a replayed backlog: one result from two hours ago, one from a minute ago
        await cache.add(batch("p1", "b-1", [icmp(1, NOW - 7200 * S), icmp(2, NOW - 60 * S)]), NOW)
        await cache.add(batch("p1", "b-2", [icmp(3, NOW - 7000 * S)]), NOW)
        assert [r.result.seq for r in await cache.store.results_for("p1")] == [2]
    finally:
        await cache.close()


async def test_a_kept_cache_is_complete_since_its_oldest_batch_and_a_new_one_since_it_opened(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.db")
    cache = await WindowCache.open(path, HOUR, NOW)
    assert cache.complete_since_ns == NOW
    await cache.add(batch("p1", "b-1", [icmp(1, NOW + 5 * S)]), NOW + 5 * S)
    await cache.close()
    kept = await WindowCache.open(path, HOUR, NOW + 3600 * S)  # a restart an hour later
    assert kept.complete_since_ns == NOW + 5 * S
    await kept.close()
    Path(path).unlink()  # the cache is lost
    for suffix in ("-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)
    fresh = await WindowCache.open(path, HOUR, NOW + 3700 * S)
    assert fresh.complete_since_ns == NOW + 3700 * S
    await fresh.close()


async def test_a_failed_write_is_counted_and_never_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = await WindowCache.open(str(tmp_path / "cache.db"), HOUR, NOW)
    try:
        async def disk_full(batch: Batch, received_ns: int) -> None:
            raise StoreError("sqlite cache.db: database or disk is full")

        monkeypatch.setattr(cache.store, "store_batch", disk_full)
        await cache.add(batch("p1", "b-1", [icmp(1, NOW + S)]), NOW + 2 * S)
        assert cache.write_failures == 1
        # its result is missing from every window that starts before it was received
        assert cache.complete_since_ns == NOW + 2 * S
    finally:
        await cache.close()


async def test_windows_before_the_cache_is_complete_are_no_data(tmp_path: Path) -> None:
    (tmp_path / "sla.yaml").write_text(PROFILES)
    path = str(tmp_path / "cache.db")
    cache = await WindowCache.open(path, 60.0, NOW)  # a new cache: it holds nothing from before NOW
    # every test fails, but the cache cannot say whether the minute before held good ones
    await cache.add(batch("p1", "b-1", [icmp(i, NOW + i * S, success=False) for i in range(1, 31)]), NOW + 31 * S)
    judge = Judge(load_sla_profiles(tmp_path / "sla.yaml"), [10.0, 60.0], open_after=1, close_after=1)
    reader = cache
    try:
        now = NOW + 31 * S
        [rtt, availability] = judge.judge(await reader.windows(now - 60 * S, now), now, cache.complete_since_ns)
        assert [(w.value, w.results) for w in availability.windows] == [(0.0, 10), (None, 30)]
        assert availability.state.status == "breach"  # the 10 s window lies wholly in the cache
        judge = Judge(load_sla_profiles(tmp_path / "sla.yaml"), [60.0], open_after=1, close_after=1)
        [rtt, availability] = judge.judge(await reader.windows(now - 60 * S, now), now, cache.complete_since_ns)
        assert (availability.state.status, availability.windows[0].value) == ("no_data", None)
        assert rtt.state.status == "no_data"
        later = NOW + 60 * S  # the minute has refilled
        [rtt, availability] = judge.judge(await reader.windows(later - 60 * S, later), later, cache.complete_since_ns)
        assert (availability.state.status, availability.windows[0].value) == ("breach", 0.0)
    finally:
        await cache.close()


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class RefusingStore(SqliteStore):
    """Stands in for an InfluxDB that is down: every write fails."""

    async def store_batch(self, batch: Batch, received_ns: int, sent: Sent | None = None) -> BatchOutcome:
        raise StoreError("influx http://127.0.0.1:9: connection refused")


@pytest.fixture(params=[False, True], ids=["accepting", "refusing"])
async def influx_app(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Clock, Path]]:
    (tmp_path / "sla.yaml").write_text(PROFILES)
    config_path = tmp_path / "collector.yaml"
    config_path.write_text(
        f"store: {{backend: influx, path: {tmp_path / 'data' / 'collector.db'}, influx: {{url: 'http://127.0.0.1:9', bucket: b}}}}\n"
        "probes: [{id: p1, token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}]\n"
        "sla: {profiles: sla.yaml, windows: [10s], interval: 100ms, open_after: 1, close_after: 1}\n"
    )  # fmt: skip
    (tmp_path / "data").mkdir()
    config, _ = load_collector_config(config_path)
    assert config.sla.cache == str(tmp_path / "data" / "sla-cache.db")

    async def accepting_store(_: StoreConfig) -> Store:  # stands in for InfluxDB
        store_class = RefusingStore if request.param else SqliteStore
        return await store_class.open(str(tmp_path / "accepted.db"))

    clock = Clock(NOW)
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(make_app(config, store_opener=accepting_store, clock=clock))
    )
    await client.start_server()
    try:
        yield client, clock, Path(config.sla.cache)
    finally:
        await client.close()


async def judged_after(client: TestClient[web.Request, web.Application], now: int) -> dict[str, object]:
    for _ in range(100):
        body: dict[str, object] = await (await client.get("/api/v1/sla")).json()
        if body["judged_ns"] == now:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"no judgement pass at {now}")


async def test_a_collector_on_the_influx_backend_judges_from_its_cache(
    influx_app: tuple[TestClient[web.Request, web.Application], Clock, Path],
) -> None:
    client, clock, cache = influx_app
    results = [icmp(i, NOW + i * S, rtt=0.020) for i in range(1, 6)]  # 20 ms: over the 10 ms ceiling
    clock.now = NOW + 6 * S
    response = await client.post("/api/v1/results", data=encode_batch(batch("p1", "b-1", results)),
                                  headers={"Authorization": "Bearer test", "Content-Type": "application/json"})  # fmt: skip
    if isinstance(client.app[STORE_KEY], RefusingStore):
        # not accepted, not acknowledged: the cache holds only what the store accepted
        assert response.status == 503
        assert rows(cache, "SELECT seq FROM results") == []
        return
    assert response.status == 200
    assert rows(cache, "SELECT seq FROM results ORDER BY seq") == [(i,) for i in range(1, 6)]
    body = await judged_after(client, clock.now)
    objectives = {o["indicator"]: o for o in body["objectives"]}  # type: ignore[attr-defined]
    # the cache opened at NOW: the 10 s window is not yet whole, so no verdict either way
    assert objectives["rtt_p95"]["status"] == "no_data" and objectives["rtt_p95"]["windows"][0]["results"] == 5
    clock.now = NOW + 11 * S
    body = await judged_after(client, clock.now)
    objectives = {o["indicator"]: o for o in body["objectives"]}  # type: ignore[attr-defined]
    assert objectives["rtt_p95"]["status"] == "breach"
    assert objectives["rtt_p95"]["windows"][0]["value"] == pytest.approx(0.020)
    assert objectives["availability"]["status"] == "ok"
    metrics = {s.name: s.value for f in text_string_to_metric_families(await (await client.get("/metrics")).text())
               for s in f.samples if s.name.startswith("qiancheng_sla_cache_")}  # fmt: skip
    assert metrics == {"qiancheng_sla_cache_write_failures_total": 0.0, "qiancheng_sla_cache_pruned_results_total": 0.0,
                       "qiancheng_sla_cache_complete_since_timestamp_seconds": NOW / S}  # fmt: skip
