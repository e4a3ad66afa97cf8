"""Abuse limits of ingest on the real application and a real SQLite store: per-probe rate limits (429 with
Retry-After), the global limit on pushes in progress (503, /metrics unaffected), the number of targets a
probe may report (422, never a series), and label values that must be printable."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from qiancheng.collector.app import make_app, make_internal_app
from qiancheng.collector.config import StoreConfig, load_collector_config
from qiancheng.collector.store import BatchOutcome, Store
from qiancheng.collector.store.sqlite import SqliteStore
from qiancheng.core.result import Result, Target
from qiancheng.core.token_bucket import TokenBucket
from qiancheng.core.wire import Batch, Sent, encode_batch

TOKEN = "token-limits-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
NOW = time.time_ns()

Client = TestClient[web.Request, web.Application]


def test_rate_limit_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket.full(rate=10.0, burst=5.0, now=0.0)
    assert bucket.wait(5, 0.0) == 0.0
    bucket.take(5, 0.0)
    assert bucket.wait(1, 0.0) == pytest.approx(0.1)
    assert bucket.wait(3, 0.2) == pytest.approx(0.1)  # 2 refilled in 0.2 s
    assert bucket.wait(1, 100.0) == 0.0 and bucket.tokens == 5.0  # never more than the burst
    assert bucket.wait(6, 100.0) == float("inf")  # more than it can ever hold


def _config(tmp_path: Path, limits: str) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(
        f"store: {{backend: sqlite, path: '{tmp_path / 'c.db'}'}}\n"
        f"probes: [{{id: p1, token_sha256: {hashlib.sha256(TOKEN.encode()).hexdigest()}}}]\n"
        f"limits: {{{limits}}}\n"
    )
    return path


def _result(seq: int, target: str = "edge") -> Result:
    return Result(kind="icmp", target=Target(name=target, address="127.0.0.1"), start_ns=NOW + seq, duration_seconds=0.1,
                  success=True, figures={"loss_ratio": 0.0}, seq=seq)  # fmt: skip


def _body(number: int, results: list[Result], city: str = "lishui") -> bytes:
    return encode_batch(Batch(probe_id="p1", batch_id=f"batch-{number:06d}", results=results, city=city, isp="ct"))


@pytest.fixture
async def open_client(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    clients: list[Client] = []

    async def start(limits: str, store_opener: Callable[[StoreConfig], Awaitable[Store]] | None = None) -> Client:
        config, _ = load_collector_config(_config(tmp_path, limits))
        app = make_app(config, store_opener=store_opener) if store_opener else make_app(config)
        client: Client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def test_rate_limit_requests_get_429_with_retry_after(open_client: Callable[..., Awaitable[Client]]) -> None:
    client = await open_client("requests_per_second: 0.5, request_burst: 2")
    statuses = [(await client.post("/api/v1/results", data=_body(n, [_result(n)]), headers=HEADERS)) for n in range(1, 4)]
    assert [s.status for s in statuses] == [200, 200, 429]
    assert statuses[2].headers["Retry-After"] == "2"  # one token back in 1 / 0.5 s
    assert "requests_per_second" in (await statuses[2].json())["error"]


async def test_rate_limit_results_get_429_and_are_stored_once_sent_again(
    open_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    client = await open_client("results_per_second: 100, result_burst: 150, max_results_per_batch: 100")
    first = await client.post("/api/v1/results", data=_body(1, [_result(n) for n in range(1, 101)]), headers=HEADERS)
    second = await client.post("/api/v1/results", data=_body(2, [_result(n) for n in range(101, 201)]), headers=HEADERS)
    assert (first.status, second.status) == (200, 429)
    assert second.headers["Retry-After"] == "1"  # 50 more tokens at 100/s
    metrics = await (await client.get("/metrics")).text()
    assert 'qiancheng_ingest_results_total{outcome="rate_limited"} 100.0' in metrics
    await asyncio.sleep(1.0)
    again = await client.post("/api/v1/results", data=_body(2, [_result(n) for n in range(101, 201)]), headers=HEADERS)
    assert again.status == 200 and (await again.json())["stored"] == 100


class _HeldStore:
    """A store whose commits wait until released: pushes stay in progress."""

    backend = "held"

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.release = asyncio.Event()
        self.waiting = 0

    async def store_batch(self, batch: Batch, received_ns: int, sent: Sent | None = None) -> BatchOutcome:
        self.waiting += 1
        await self.release.wait()
        return await self.inner.store_batch(batch, received_ns, sent)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_rate_limit_concurrent_pushes_past_the_limit_get_503_and_metrics_still_answer(
    open_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    held: list[_HeldStore] = []

    async def opener(config: StoreConfig) -> Store:
        held.append(_HeldStore(await SqliteStore.open(config.path)))
        return held[0]  # type: ignore[return-value]

    client = await open_client("max_concurrent_requests: 2, request_burst: 100", store_opener=opener)
    internal: Client = TestClient(TestServer(make_internal_app(client.app)))
    await internal.start_server()
    try:
        pushes = [asyncio.create_task(client.post("/api/v1/results", data=_body(n, [_result(n)]), headers=HEADERS))
                  for n in (1, 2)]  # fmt: skip
        while held[0].waiting < 2:
            await asyncio.sleep(0.01)
        third = await client.post("/api/v1/results", data=_body(3, [_result(3)]), headers=HEADERS)
        assert third.status == 503 and third.headers["Retry-After"] == "1"
        assert "max_concurrent_requests" in (await third.json())["error"]
        # the internal listener answers while ingest is full
        assert (await internal.get("/metrics")).status == 200
        assert (await internal.get("/healthz")).status == 200
        held[0].release.set()
        assert [(await push).status for push in pushes] == [200, 200]
        assert (await client.post("/api/v1/results", data=_body(3, [_result(3)]), headers=HEADERS)).status == 200
    finally:
        held[0].release.set()
        await internal.close()


async def test_cardinality_targets_past_the_limit_are_refused_and_make_no_series(
    open_client: Callable[..., Awaitable[Client]],
) -> None:
    client = await open_client("max_targets_per_probe: 3")
    ok = await client.post("/api/v1/results", data=_body(1, [_result(1, "t1"), _result(2, "t2")]), headers=HEADERS)
    assert ok.status == 200
    invented = [_result(10 + i, f"invented-{i}") for i in range(5)]
    refused = await client.post("/api/v1/results", data=_body(2, [_result(3, "t1"), *invented]), headers=HEADERS)
    assert refused.status == 422
    body = await refused.json()
    # t1 is known, invented-0 is the third and last target allowed; invented-1 is the first past the limit
    assert body["field"] == "$.results[2].target.name" and "limits.max_targets_per_probe (3)" in body["error"]
    metrics = await (await client.get("/metrics")).text()
    assert 'qiancheng_ingest_results_total{outcome="cardinality"} 4.0' in metrics
    assert "invented" not in metrics
    # known targets go on, and the one allowed new target is still free
    fine = await client.post("/api/v1/results", data=_body(3, [_result(20, "t2"), _result(21, "t3")]), headers=HEADERS)
    assert fine.status == 200
    full = await client.post("/api/v1/results", data=_body(4, [_result(22, "t4")]), headers=HEADERS)
    assert full.status == 422


async def test_cardinality_limit_counts_what_the_store_already_holds(
    open_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    store = await SqliteStore.open(str(tmp_path / "c.db"))
    try:
        await store.store_batch(Batch(probe_id="p1", batch_id="batch-000000", results=[_result(1, "a"), _result(2, "b")]), NOW)
    finally:
        await store.close()
    client = await open_client("max_targets_per_probe: 2")  # a restarted collector on the same store
    refused = await client.post("/api/v1/results", data=_body(1, [_result(3, "c")]), headers=HEADERS)
    assert refused.status == 422


@pytest.mark.parametrize("city", ["line\nbreak", "bell\x07", "x" * 129])
async def test_cardinality_label_values_are_bounded_in_length_and_characters(
    open_client: Callable[..., Awaitable[Client]], city: str
) -> None:
    client = await open_client("")
    refused = await client.post("/api/v1/results", data=_body(1, [_result(1)], city=city), headers=HEADERS)
    assert refused.status == 422 and (await refused.json())["field"] == "$.city"

