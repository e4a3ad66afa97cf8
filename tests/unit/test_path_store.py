"""Traced paths in the collector: hops and path changes kept by SQLite (a version-1 database upgraded in
place), written as InfluxDB points identical to influxdb-client's, and shown on /metrics per hop within
the configured bound."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from influxdb_client.client.write.point import Point
from prometheus_client import generate_latest

from qiancheng.collector.live import series_labels
from qiancheng.collector.metrics import build_registry, new_live_state
from qiancheng.collector.store.lineprotocol import batch_lines
from qiancheng.collector.store.sqlite import SCHEMA_VERSION, SqliteStore
from qiancheng.core.result import Hop, Result, Target
from qiancheng.core.wire import Batch

T0 = 1_790_000_000_000_000_000
S = 1_000_000_000
POOL = Target(name="pool", address="198.18.0.14", target_class="cloud_pool")
ROUTES = {"a": ["198.18.0.2", "198.18.0.6", "198.18.0.10", "198.18.0.14"],
          "b": ["198.18.0.2", "198.18.0.18", "198.18.0.10", "198.18.0.14"]}  # fmt: skip


def path(seq: int, start_ns: int, route: str, previous: str | None = None, target: Target = POOL) -> Result:
    hops = [Hop(ttl=ttl, sent=10, received=10 if ttl != 2 else 3, loss_ratio=0.0 if ttl != 2 else 0.7,
                address=address, rtt_min_seconds=0.001 * ttl, rtt_median_seconds=0.0012 * ttl,
                rtt_max_seconds=0.002 * ttl, rtt_last_seconds=0.0011 * ttl, rate_limited=ttl == 2,
                asn=64500 if ttl > 2 else None, mpls=[16001] if ttl == 3 else [])
            for ttl, address in enumerate(ROUTES[route], 1)]  # fmt: skip
    info = {"fingerprint": f"{route * 16}", "address": target.address, "protocol": "icmp"}
    figures = {"hop_count": 4.0, "destination_reached": 1.0, "path_changes": 0.0, "rtt_median_seconds": 0.0048,
               "loss_ratio": 0.0, "rate_limited_hops": 1.0}
    if previous is not None:
        info["previous_fingerprint"] = previous * 16
        figures["path_changes"] = 1.0
    return Result(kind="path", target=target, start_ns=start_ns, duration_seconds=9.5, success=True,
                  figures=figures, info=info, hops=hops, seq=seq)  # fmt: skip


def batch(batch_id: str, results: list[Result]) -> Batch:
    return Batch(probe_id="p1", batch_id=batch_id, results=results, city="lishui", isp="ct")


async def test_hops_and_changes_are_stored_and_read_back(tmp_path: Path) -> None:
    store = await SqliteStore.open(str(tmp_path / "c.db"))
    try:
        results = [path(1, T0, "a"), path(2, T0 + 300 * S, "b", previous="a"), path(3, T0 + 600 * S, "b"),
                   path(4, T0 + 900 * S, "a", previous="b")]  # fmt: skip
        await store.store_batch(batch("batch-0001", results[:2]), T0)
        await store.store_batch(batch("batch-0002", results[2:]), T0)
        await store.store_batch(batch("batch-0002", results[2:]), T0)  # a retry stores no change twice
        [latest] = await store.latest(kind="path")
        assert latest.result == results[3]  # hops and all
        changes = await store.path_changes("p1", "pool")
        assert [(c.start_ns, c.fingerprint, c.previous_fingerprint) for c in changes] == [
            (T0 + 900 * S, "a" * 16, "b" * 16), (T0 + 300 * S, "b" * 16, "a" * 16)]
        assert [c.start_ns for c in await store.path_changes(limit=1)] == [T0 + 900 * S]
        assert await store.path_changes("p2") == [] and await store.path_changes(target="edge") == []
        assert (await store.results_for("p1"))[0].result.hops == results[0].hops
        await store.prune(T0 + 600 * S)
        assert [c.start_ns for c in await store.path_changes()] == [T0 + 900 * S]
    finally:
        await store.close()


_VERSION_1 = """
CREATE TABLE results (probe_id TEXT NOT NULL, seq INTEGER NOT NULL, batch_id TEXT NOT NULL, city TEXT NOT NULL,
  isp TEXT NOT NULL, kind TEXT NOT NULL, target_name TEXT NOT NULL, target_address TEXT NOT NULL,
  target_class TEXT NOT NULL, start_ns INTEGER NOT NULL, duration_seconds REAL NOT NULL, success INTEGER NOT NULL,
  error TEXT, detail TEXT, figures TEXT NOT NULL, info TEXT NOT NULL, samples TEXT NOT NULL,
  received_ns INTEGER NOT NULL, PRIMARY KEY (probe_id, seq));
INSERT INTO results VALUES ('p1', 1, 'batch-0000', 'lishui', 'ct', 'icmp', 'edge', '198.18.0.1', 'edge', 5, 0.1, 1,
  NULL, NULL, '{"loss_ratio":0.0}', '{}', '[0.001]', 6);
PRAGMA user_version=1;
"""


async def test_a_version_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    file = tmp_path / "old.db"
    with sqlite3.connect(file) as db:
        db.executescript(_VERSION_1)
    store = await SqliteStore.open(str(file))
    try:
        [old] = await store.results_for("p1")
        assert old.result.samples == [0.001] and old.result.hops == []
        await store.store_batch(batch("batch-0001", [path(2, T0, "a")]), T0)
        assert [r.result.hops[1].address for r in await store.results_for("p1") if r.result.kind == "path"] == [ROUTES["a"][1]]
    finally:
        await store.close()
    with sqlite3.connect(file) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3


def _hop_point(result: Result, hop: Hop) -> str:
    point = Point("qiancheng_path_hop").time(result.start_ns)  # type: ignore[no-untyped-call]
    for name, value in (("probe", "p1"), ("city", "lishui"), ("isp", "ct"), ("target", result.target.name),
                        ("target_class", result.target.target_class), ("kind", "path"), ("flow", str(hop.flow)),
                        ("ttl", str(hop.ttl))):  # fmt: skip
        point.tag(name, value)
    point.field("loss_ratio", hop.loss_ratio).field("sent", hop.sent).field("received", hop.received)
    point.field("rate_limited", int(hop.rate_limited))
    for name in ("rtt_min_seconds", "rtt_median_seconds", "rtt_max_seconds", "rtt_last_seconds"):
        point.field(name, getattr(hop, name))
    if hop.address:
        point.field("address", hop.address)
    if hop.asn is not None:
        point.field("asn", hop.asn)
    if hop.mpls:
        point.field("mpls", "/".join(map(str, hop.mpls)))
    return str(point.to_line_protocol())


def test_hop_points_match_influxdb_client() -> None:
    result = path(2, T0, "b", previous="a")
    lines = batch_lines(batch("batch-0001", [result]), [result], T0 + 5).split("\n")
    assert lines[0].startswith("qiancheng_result,") and 'fingerprint="bbbbbbbbbbbbbbbb"' in lines[0]
    assert 'previous_fingerprint="aaaaaaaaaaaaaaaa"' in lines[0] and "path_changes=1" in lines[0]
    assert lines[1:5] == [_hop_point(result, hop) for hop in result.hops]
    assert lines[5].startswith("qiancheng_probe,")


def test_per_hop_metrics_stay_within_the_bound() -> None:
    state = new_live_state()
    targets = [Target(name=f"pool-{i}", address=f"198.18.1.{i}", target_class="cloud_pool") for i in range(3)]
    state.apply("p1", "lishui", "ct", [path(i + 1, T0, "a", target=t) for i, t in enumerate(targets)], T0)
    everything = generate_latest(build_registry(state, clock=lambda: T0, process=False)).decode()
    assert everything.count("qiancheng_path_hop_rtt_seconds{") == 12
    assert 'qiancheng_path_hop_rate_limited{address="198.18.0.6",city="lishui",hop="2"' in everything
    assert "qiancheng_path_hops_omitted 0.0" in everything
    bounded = generate_latest(build_registry(state, clock=lambda: T0, process=False, hop_series=5)).decode()
    assert bounded.count("qiancheng_path_hop_rtt_seconds{") == 5
    assert bounded.count("qiancheng_path_hop_loss_ratio{") == 5
    assert "qiancheng_path_hops_omitted 7.0" in bounded
    # the end-to-end figures of every path stay
    assert bounded.count("qiancheng_path_rtt_seconds{") == 3 and bounded.count("qiancheng_path_info{") == 3
    assert series_labels("p1", "lishui", "ct", path(1, T0, "a"))[-1] == "path"
