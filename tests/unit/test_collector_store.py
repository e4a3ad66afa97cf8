"""SQLite store: exactly-once by batch and by seq, latest by start time, probes and totals, reopen."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
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


# --- schema 3: results kept as sent, under integer series; an older database upgraded in place


async def test_results_are_kept_as_the_probe_sent_them(store: SqliteStore, tmp_path: Path) -> None:
    results = [icmp(1, T0), dns(2, T0 + 1)]
    sent = [b'{ "kind":"icmp", "target":{"name":"edge","address":"198.18.0.10"}, "start_ns":%d,' % T0
            + b' "duration_seconds":0.4, "success":true, "seq":1 }', msgspec.json.encode(results[1])]  # fmt: skip
    as_sent = [msgspec.json.decode(sent[0], type=Result), results[1]]
    await store.store_batch(batch("batch-0001", as_sent), T0 + 5, sent)
    assert [stored.result for stored in await store.results_for("p1")] == as_sent
    path = store.path
    with sqlite3.connect(path) as db:  # the bytes as they came, spaces and all
        assert [bytes(r) for (r,) in db.execute("SELECT result FROM records ORDER BY seq")] == sent


async def test_a_relabelled_probe_starts_new_series_and_latest_is_the_newest(store: SqliteStore) -> None:
    await store.store_batch(batch("batch-0001", [icmp(1, T0), icmp(2, T0 + 10)]), T0)
    moved = Batch(probe_id="p1", batch_id="batch-0002", results=[icmp(3, T0 + 20)], city="quzhou", isp="ct")
    await store.store_batch(moved, T0 + 20)
    [latest] = await store.latest()
    assert (latest.city, latest.result.seq) == ("quzhou", 3)
    windows = await store.windows(T0, T0 + 30)
    assert [(key.city, [row.start_ns for row in rows]) for key, rows in windows] == [
        ("lishui", [T0, T0 + 10]), ("quzhou", [T0 + 20])]  # fmt: skip
    assert [(s.city, s.result.seq) for s in await store.results_for("p1")] == [("lishui", 1), ("lishui", 2), ("quzhou", 3)]


async def test_a_failed_transaction_forgets_the_series_it_made(store: SqliteStore) -> None:
    # the last batch of the group makes a series and then fails (a start too large for SQLite) after the
    # others made theirs: the group rolls back, each batch is written alone, and their series must exist
    bad = Batch(probe_id="p2", batch_id="batch-bad1", results=[icmp(1, T0), dns(2, 2**63)], city="lishui", isp="ct")
    good = batch("batch-0001", [dns(1, T0)])
    outcomes = await asyncio.gather(store.store_batch(batch("batch-0000", [icmp(1, T0)], probe="p3"), T0),
                                    store.store_batch(good, T0), store.store_batch(bad, T0), return_exceptions=True)  # fmt: skip
    assert [type(o).__name__ for o in outcomes] == ["BatchOutcome", "BatchOutcome", "OverflowError"]
    await store.store_batch(batch("batch-0002", [dns(2, T0 + 1)]), T0 + 1)
    assert [(s.probe_id, s.result.seq) for s in await store.latest()] == [("p1", 2), ("p3", 1)]


def _v2_row(probe: str, batch_id: str, city: str, result: Result, received_ns: int) -> tuple[object, ...]:
    t, encode = result.target, msgspec.json.encode
    return (probe, result.seq, batch_id, city, "ct", result.kind, t.name, t.address, t.target_class, result.start_ns,
            result.duration_seconds, int(result.success), result.error, result.detail, encode(result.figures).decode(),
            encode(result.info).decode(), encode(result.samples).decode(), received_ns,
            encode(result.hops).decode() if result.hops else "[]")  # fmt: skip


#: a schema-2 database as the collector made it before schema 3
_VERSION_2 = """
CREATE TABLE batches (probe_id TEXT NOT NULL, batch_id TEXT NOT NULL, received_ns INTEGER NOT NULL,
  results INTEGER NOT NULL, stored INTEGER NOT NULL, PRIMARY KEY (probe_id, batch_id)) WITHOUT ROWID;
CREATE TABLE results (probe_id TEXT NOT NULL, seq INTEGER NOT NULL, batch_id TEXT NOT NULL, city TEXT NOT NULL,
  isp TEXT NOT NULL, kind TEXT NOT NULL, target_name TEXT NOT NULL, target_address TEXT NOT NULL,
  target_class TEXT NOT NULL, start_ns INTEGER NOT NULL, duration_seconds REAL NOT NULL, success INTEGER NOT NULL,
  error TEXT, detail TEXT, figures TEXT NOT NULL, info TEXT NOT NULL, samples TEXT NOT NULL,
  received_ns INTEGER NOT NULL, hops TEXT NOT NULL DEFAULT '[]', PRIMARY KEY (probe_id, seq));
CREATE INDEX results_series ON results (probe_id, target_name, kind, start_ns);
CREATE TABLE latest (probe_id TEXT NOT NULL, target_name TEXT NOT NULL, kind TEXT NOT NULL,
  start_ns INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (probe_id, target_name, kind)) WITHOUT ROWID;
CREATE TABLE path_changes (probe_id TEXT NOT NULL, target_name TEXT NOT NULL, start_ns INTEGER NOT NULL,
  seq INTEGER NOT NULL, fingerprint TEXT NOT NULL, previous_fingerprint TEXT NOT NULL,
  PRIMARY KEY (probe_id, target_name, start_ns, seq)) WITHOUT ROWID;
CREATE TABLE probes (probe_id TEXT PRIMARY KEY, city TEXT NOT NULL, isp TEXT NOT NULL, labels TEXT NOT NULL,
  stats TEXT NOT NULL, last_seen_ns INTEGER NOT NULL, batches INTEGER NOT NULL, results INTEGER NOT NULL) WITHOUT ROWID;
PRAGMA user_version=2;
"""


async def test_a_version_2_database_is_upgraded_in_place(tmp_path: Path) -> None:
    file = tmp_path / "v2.db"
    odd = Result(kind="http", target=Target(name="cdn", address="https://cdn.example/o", target_class="cdn"),
                 start_ns=T0 + 3, duration_seconds=0.123456789012345678, success=True, detail="a \"quoted\" détail",
                 figures={"ttfb_seconds": 0.1 + 0.2, "bytes": 33554432.0}, info={"cache_status": "HIT"}, seq=4)  # fmt: skip
    rows = [("p1", "batch-0001", "lishui", icmp(1, T0), T0 + 1), ("p1", "batch-0001", "lishui", dns(2, T0 + 1), T0 + 1),
            ("p1", "batch-0002", "quzhou", icmp(3, T0 + 2), T0 + 2), ("p1", "batch-0002", "quzhou", odd, T0 + 2),
            ("p2", "batch-0001", "lishui", icmp(1, T0 + 5), T0 + 6)]  # fmt: skip
    with sqlite3.connect(file) as db:
        db.executescript(_VERSION_2)
        db.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [_v2_row(p, b, c, r, n) for p, b, c, r, n in rows])  # fmt: skip
        db.executemany("INSERT INTO batches VALUES (?, ?, ?, 2, 2)", {(p, b, n) for p, b, _, _, n in rows})
        view_before = db.execute("SELECT * FROM results ORDER BY probe_id, seq").fetchall()
    store = await SqliteStore.open(str(file))
    try:
        assert [(s.probe_id, s.city, s.received_ns, s.result) for s in await store.results_for("p1")] == [
            ("p1", c, n, r) for p, _, c, r, n in rows if p == "p1"]  # fmt: skip
        assert [(s.probe_id, s.result.seq, s.city) for s in await store.latest()] == [
            ("p1", 4, "quzhou"), ("p1", 3, "quzhou"), ("p1", 2, "lishui"), ("p2", 1, "lishui")]  # by target: cdn, edge, resolver
        assert (await store.store_batch(batch("batch-0002", [icmp(9, T0)]), T0)).duplicate  # batches kept
        outcome = await store.store_batch(batch("batch-0003", [icmp(3, T0 + 2), icmp(5, T0 + 7)]), T0 + 7)
        assert [r.seq for r in outcome.new] == [5]  # seq 3 was stored before the upgrade
        assert sum(len(window) for _, window in await store.windows(T0, T0 + 10)) == 6
    finally:
        await store.close()
    with sqlite3.connect(file) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        view_after = db.execute("SELECT * FROM results WHERE NOT (probe_id = 'p1' AND seq = 5) ORDER BY probe_id, seq")
        for before, after in zip(view_before, view_after, strict=True):  # the old columns, read through the view
            assert before[:12] == after[:12] and before[12:14] == after[12:14] and before[17] == after[17]
            for column in (14, 15, 16, 18):  # JSON, possibly spaced otherwise
                assert msgspec.json.decode(before[column]) == msgspec.json.decode(after[column])
        assert {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {
            "batches", "series", "records", "path_changes", "probes"}  # fmt: skip


async def test_a_series_pruned_away_is_made_again_by_its_next_result(store: SqliteStore) -> None:
    await store.store_batch(batch("batch-0001", [icmp(1, T0)]), T0)
    assert await store.prune(T0 + 1) == 1 and await store.latest() == []
    await store.store_batch(batch("batch-0002", [icmp(2, T0 + 2)]), T0 + 2)
    assert [(s.result.seq, s.city) for s in await store.latest()] == [(2, "lishui")]
    assert [key.target for key, _ in await store.windows(T0, T0 + 5)] == ["edge"]
