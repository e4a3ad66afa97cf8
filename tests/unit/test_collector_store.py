"""SQLite store: exactly-once by batch and by seq, latest by start time, probes and totals, reopen."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qiancheng.collector.store import StoreError
from qiancheng.collector.store.sqlite import SCHEMA_VERSION, SqliteStore
from qiancheng.core.result import Result, Target
from qiancheng.core.stats import train_stats
from qiancheng.core.wire import Batch

T0 = 1_790_000_000_000_000_000
EDGE = Target(name="edge", address="198.18.0.10", target_class="edge")
RESOLVER = Target(name="resolver", address="198.18.0.53", target_class="dns")


def icmp(seq: int, start_ns: int, samples: list[float | None] | None = None) -> Result:
    samples = samples if samples is not None else [0.010, 0.011, None, 0.012]
    return Result(kind="icmp", target=EDGE, start_ns=start_ns, duration_seconds=0.4, success=True,
                  figures=train_stats(samples).figures(), samples=samples, seq=seq)  # fmt: skip


def dns(seq: int, start_ns: int) -> Result:
    return Result(kind="dns", target=RESOLVER, start_ns=start_ns, duration_seconds=0.02, success=False,
                  error="servfail", figures={"lookup_seconds": 0.02, "rcode_value": 2.0},
                  info={"rcode": "SERVFAIL"}, seq=seq)  # fmt: skip


def batch(batch_id: str, results: list[Result], probe: str = "p1", stats: dict[str, float] | None = None) -> Batch:
    return Batch(probe_id=probe, batch_id=batch_id, results=results, city="lishui", isp="ct",
                 labels={"site": "olt-3"}, stats=stats or {"spool_backlog": 2.0})  # fmt: skip


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(str(tmp_path / "collector.db"))
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_batch_is_stored_and_reads_back_equal(store: SqliteStore) -> None:
    results = [icmp(1, T0), dns(2, T0 + 1)]
    outcome = await store.store_batch(batch("batch-0001", results), received_ns=T0 + 5)
    assert not outcome.duplicate and outcome.stored == 2
    stored = await store.results_for("p1")
    assert [s.result for s in stored] == results
    assert {(s.city, s.isp, s.received_ns) for s in stored} == {("lishui", "ct", T0 + 5)}
    assert await store.count() == 2 and await store.count("p1") == 2 and await store.count("p2") == 0


async def test_a_repeated_batch_id_stores_nothing(store: SqliteStore) -> None:
    first = batch("batch-0001", [icmp(1, T0)])
    await store.store_batch(first, T0)
    again = await store.store_batch(first, T0 + 10)
    assert again.duplicate and again.stored == 0
    assert await store.count() == 1
    [probe] = await store.probes()
    assert (probe.batches, probe.results) == (1, 1)


async def test_the_same_batch_id_of_another_probe_is_not_a_duplicate(store: SqliteStore) -> None:
    await store.store_batch(batch("batch-0001", [icmp(1, T0)], probe="p1"), T0)
    outcome = await store.store_batch(batch("batch-0001", [icmp(1, T0)], probe="p2"), T0)
    assert not outcome.duplicate and outcome.stored == 1


async def test_a_result_resent_in_another_batch_is_stored_once(store: SqliteStore) -> None:
    await store.store_batch(batch("batch-0001", [icmp(1, T0), icmp(2, T0 + 1)]), T0)
    outcome = await store.store_batch(batch("batch-0002", [icmp(2, T0 + 1), icmp(3, T0 + 2), icmp(3, T0 + 2)]), T0)
    assert not outcome.duplicate
    assert [r.seq for r in outcome.new] == [3]
    assert [s.result.seq for s in await store.results_for("p1")] == [1, 2, 3]


async def test_a_reused_seq_with_another_start_is_a_conflict_not_a_duplicate(store: SqliteStore) -> None:
    await store.store_batch(batch("batch-0001", [icmp(1, T0), icmp(2, T0 + 1)]), T0)
    # a reinstalled probe whose new spool numbers from 1 again: same seqs, later tests
    outcome = await store.store_batch(batch("batch-0002", [icmp(1, T0 + 900), icmp(2, T0 + 1), icmp(3, T0 + 901)]), T0)
    assert (outcome.conflicts, [r.seq for r in outcome.new]) == (1, [3])
    assert [s.result.start_ns for s in await store.results_for("p1")] == [T0, T0 + 1, T0 + 901]


async def test_sparse_seqs_are_checked_exactly(store: SqliteStore) -> None:
    await store.store_batch(batch("batch-0001", [icmp(5, T0), icmp(5000, T0)]), T0)
    outcome = await store.store_batch(batch("batch-0002", [icmp(1, T0), icmp(5000, T0), icmp(90000, T0)]), T0)
    assert [r.seq for r in outcome.new] == [1, 90000]


async def test_latest_is_by_start_time_so_a_late_result_does_not_replace_a_newer_one(store: SqliteStore) -> None:
    newer = icmp(10, T0 + 60_000_000_000)
    await store.store_batch(batch("batch-0001", [newer, dns(11, T0)]), T0)
    late = icmp(3, T0)  # replayed from a spool after an outage: lower seq, older start
    await store.store_batch(batch("batch-0002", [late]), T0 + 120_000_000_000)
    latest = {(s.result.target.name, s.result.kind): s.result for s in await store.latest()}
    assert latest == {("edge", "icmp"): newer, ("resolver", "dns"): dns(11, T0)}
    assert [s.result for s in await store.latest(kind="dns")] == [dns(11, T0)]
    assert await store.latest(probe_id="nobody") == []
    assert await store.count() == 3  # the late one is stored all the same, with its true start time


async def test_probes_keep_the_latest_batch_and_totals(store: SqliteStore) -> None:
    await store.store_batch(batch("batch-0001", [icmp(1, T0)], stats={"spool_backlog": 7.0}), T0)
    await store.store_batch(batch("batch-0002", [icmp(2, T0), icmp(3, T0)], stats={"spool_backlog": 1.0}), T0 + 9)
    [probe] = await store.probes()
    assert (probe.probe_id, probe.city, probe.isp, probe.labels) == ("p1", "lishui", "ct", {"site": "olt-3"})
    assert (probe.stats, probe.last_seen_ns, probe.batches, probe.results) == ({"spool_backlog": 1.0}, T0 + 9, 2, 3)


async def test_rows_are_durable_across_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "collector.db")
    store = await SqliteStore.open(path)
    await store.store_batch(batch("batch-0001", [icmp(1, T0)]), T0)
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT probe_id, seq, kind, target_name FROM results").fetchall() == [("p1", 1, "icmp", "edge")]
    reopened = await SqliteStore.open(path)
    try:
        assert (await reopened.store_batch(batch("batch-0001", [icmp(1, T0)]), T0)).duplicate
        assert len(await reopened.latest()) == 1
        assert await reopened.healthy()
    finally:
        await reopened.close()
    assert not await reopened.healthy()


async def test_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        await SqliteStore.open(str(tmp_path / "no" / "such" / "collector.db"))


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "collector.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore.open(str(path))


async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "collector.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreError):
        await SqliteStore.open(str(path))
