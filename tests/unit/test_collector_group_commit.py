"""Group commit on a real SQLite store: batches stored at the same time share one transaction, each is
stored exactly once and answered with its own outcome; a duplicate inside a group is recognised; a batch
that fails fails alone; a store that cannot commit fails every batch of the group and keeps none of it.
Then the same through the real ingest endpoint: every push acknowledged is stored once and counted."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from qiancheng.collector.app import make_app
from qiancheng.collector.config import StoreConfig, load_collector_config
from qiancheng.collector.store import BatchOutcome, Store, StoreError
from qiancheng.collector.store.sqlite import SqliteStore
from qiancheng.core.result import Result, Target
from qiancheng.core.wire import Batch, encode_batch

NOW = time.time_ns()
TOKEN = "token-group-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

Client = TestClient[web.Request, web.Application]


def _result(seq: int, samples: int = 3) -> Result:
    return Result(kind="icmp", target=Target(name=f"edge-{seq % 5}", address="198.18.0.1"), start_ns=NOW + seq,
                  duration_seconds=0.1, success=True, figures={"loss_ratio": 0.0},
                  samples=[0.001 * (1 + k % 9) for k in range(samples)], seq=seq)  # fmt: skip


def _batch(number: int, seqs: range | list[int], samples: int = 3) -> Batch:
    return Batch(probe_id="p1", batch_id=f"batch-{number:06d}", results=[_result(s, samples) for s in seqs],
                 city="lishui", isp="ct")  # fmt: skip


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(str(tmp_path / "collector.db"))
    try:
        yield opened
    finally:
        await opened.close()


def _rows(path: str) -> list[tuple[str, int]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return list(db.execute("SELECT batch_id, seq FROM results ORDER BY seq"))


async def _fill_the_disk(store: SqliteStore) -> None:
    """The store's file may not grow by a page any more: inserts fail as on a full disk (SQLITE_FULL)."""
    def cap() -> None:
        pages = store._writer.db.execute("PRAGMA page_count").fetchone()[0]
        store._writer.db.execute(f"PRAGMA max_page_count = {pages}")

    await store._writer.run(cap)


async def _free_the_disk(store: SqliteStore) -> None:
    await store._writer.run(lambda: store._writer.db.execute("PRAGMA max_page_count = 1073741823"))


async def test_batches_stored_at_once_share_one_transaction_and_each_is_stored_once(store: SqliteStore) -> None:
    batches = [_batch(n, range(n * 10 + 1, n * 10 + 11)) for n in range(20)]
    outcomes = await asyncio.gather(*(store.store_batch(b, NOW) for b in batches))
    assert [(o.duplicate, o.stored) for o in outcomes] == [(False, 10)] * 20
    assert [[r.seq for r in o.new] for o in outcomes] == [[r.seq for r in b.results] for b in batches]
    assert (store.commits.groups, store.commits.batches) == (1, 20)
    rows = _rows(store.path)
    assert rows == [(f"batch-{(seq - 1) // 10:06d}", seq) for seq in range(1, 201)]
    assert [p.batches for p in await store.probes()] == [20]


async def test_a_group_takes_at_most_its_bound_of_results(store: SqliteStore) -> None:
    store.commits._max_results = 25
    outcomes = await asyncio.gather(*(store.store_batch(_batch(n, range(n * 10 + 1, n * 10 + 11)), NOW) for n in range(6)))
    assert sum(o.stored for o in outcomes) == 60
    assert (store.commits.groups, store.commits.batches) == (3, 6)  # 10 + 10 a transaction, never 30


async def test_a_batch_repeated_inside_one_group_is_a_duplicate_and_shared_seqs_are_stored_once(
    store: SqliteStore,
) -> None:
    first = _batch(1, [1, 2, 3])
    overlapping = _batch(2, [3, 4])  # seq 3 again, same start: a re-send inside another batch
    outcomes = await asyncio.gather(store.store_batch(first, NOW), store.store_batch(first, NOW + 1),
                                    store.store_batch(overlapping, NOW + 2))  # fmt: skip
    assert store.commits.groups == 1
    assert [(o.duplicate, o.stored) for o in outcomes] == [(False, 3), (True, 0), (False, 1)]
    assert [r.seq for r in outcomes[2].new] == [4]
    assert _rows(store.path) == [("batch-000001", 1), ("batch-000001", 2), ("batch-000001", 3), ("batch-000002", 4)]


async def test_a_batch_that_fails_in_a_group_fails_alone(store: SqliteStore) -> None:
    # a seq past SQLite's 64-bit integers cannot be stored: that batch's own fault, not its neighbours'
    good, bad, later = _batch(1, [1, 2]), _batch(2, [2**63]), _batch(3, [3, 4])
    outcomes = await asyncio.gather(*(store.store_batch(b, NOW) for b in (good, bad, later)), return_exceptions=True)
    assert isinstance(outcomes[1], OverflowError)
    assert [(o.duplicate, o.stored) for o in outcomes if isinstance(o, BatchOutcome)] == [(False, 2), (False, 2)]
    assert store.commits.groups == 2  # the group rolled back; the two good batches then committed alone
    assert _rows(store.path) == [("batch-000001", 1), ("batch-000001", 2), ("batch-000003", 3), ("batch-000003", 4)]


async def test_a_store_that_cannot_commit_fails_every_batch_of_the_group_and_keeps_none(store: SqliteStore) -> None:
    await store.store_batch(_batch(0, [1]), NOW)
    await _fill_the_disk(store)
    batches = [_batch(n, range(n * 100, n * 100 + 50), samples=100) for n in (1, 2, 3)]  # pages of new rows
    outcomes = await asyncio.gather(*(store.store_batch(b, NOW) for b in batches), return_exceptions=True)
    assert all(isinstance(o, StoreError) and "full" in str(o) for o in outcomes), outcomes
    assert _rows(store.path) == [("batch-000000", 1)]
    await _free_the_disk(store)
    # nothing of them was kept: sent again, they are stored, not taken for duplicates
    again = await asyncio.gather(*(store.store_batch(b, NOW) for b in batches))
    assert [(o.duplicate, o.stored) for o in again] == [(False, 50)] * 3
    assert len(_rows(store.path)) == 151


async def test_close_waits_for_the_batches_still_waiting(tmp_path: Path) -> None:
    store = await SqliteStore.open(str(tmp_path / "c.db"))
    pending = [asyncio.create_task(store.store_batch(_batch(n, [n + 1]), NOW)) for n in range(5)]
    await asyncio.sleep(0)  # each has handed its batch over
    await store.close()
    assert [(await p).stored for p in pending] == [1] * 5
    assert len(_rows(store.path)) == 5


# -- through the ingest endpoint ---------------------------------------------------------------------------


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(
        f"store: {{backend: sqlite, path: '{tmp_path / 'c.db'}'}}\n"
        f"probes: [{{id: p1, token_sha256: {hashlib.sha256(TOKEN.encode()).hexdigest()}}}]\n"
        "limits: {requests_per_second: 10000, request_burst: 10000, results_per_second: 1000000, result_burst: 1000000}\n"
    )
    return path


@pytest.fixture
async def open_client(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[tuple[Client, list[SqliteStore]]]]]:
    clients: list[Client] = []

    async def start() -> tuple[Client, list[SqliteStore]]:
        opened: list[SqliteStore] = []

        async def opener(config: StoreConfig) -> Store:
            opened.append(await SqliteStore.open(config.path))
            return opened[0]

        config, _ = load_collector_config(_config(tmp_path))
        client: Client = TestClient(TestServer(make_app(config, store_opener=opener)))
        await client.start_server()
        clients.append(client)
        return client, opened

    yield start
    for client in clients:
        await client.close()


def _stored_on_metrics(text: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith('qiancheng_ingest_results_total{outcome="stored"}'))
    return float(line.rsplit(" ", 1)[1])


async def test_concurrent_pushes_are_each_acknowledged_stored_once_and_counted(
    open_client: Callable[..., Awaitable[tuple[Client, list[SqliteStore]]]],
) -> None:
    client, stores = await open_client()
    bodies = [encode_batch(_batch(n, range(n * 20 + 1, n * 20 + 21))) for n in range(40)]
    answers = await asyncio.gather(*(client.post("/api/v1/results", data=body, headers=HEADERS) for body in bodies))
    assert [a.status for a in answers] == [200] * 40
    assert [(await a.json())["stored"] for a in answers] == [20] * 40
    again = await client.post("/api/v1/results", data=bodies[7], headers=HEADERS)  # a retry: acknowledged, not stored
    assert again.status == 200 and (await again.json()) == {"accepted": 20, "duplicate": True, "stored": 0}
    assert sorted(seq for _, seq in _rows(stores[0].path)) == list(range(1, 801))
    assert _stored_on_metrics(await (await client.get("/metrics")).text()) == 800
    assert stores[0].commits.batches == 41


async def test_a_group_the_store_cannot_commit_is_answered_503_for_every_push(
    open_client: Callable[..., Awaitable[tuple[Client, list[SqliteStore]]]],
) -> None:
    client, stores = await open_client()
    await _fill_the_disk(stores[0])
    bodies = [encode_batch(_batch(n, range(n * 100, n * 100 + 50), samples=100)) for n in range(1, 5)]
    answers = await asyncio.gather(*(client.post("/api/v1/results", data=body, headers=HEADERS) for body in bodies))
    assert [(a.status, a.headers.get("Retry-After")) for a in answers] == [(503, "5")] * 4
    assert _rows(stores[0].path) == []
    metrics = await (await client.get("/metrics")).text()
    assert _stored_on_metrics(metrics) == 0 and 'qiancheng_ingest_requests_total{code="503"} 4.0' in metrics
    await _free_the_disk(stores[0])
    retried = await asyncio.gather(*(client.post("/api/v1/results", data=body, headers=HEADERS) for body in bodies))
    assert [(a.status, (await a.json())["stored"]) for a in retried] == [(200, 50)] * 4
    assert len(_rows(stores[0].path)) == 200
