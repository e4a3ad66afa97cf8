"""Uploader against a real, scripted HTTP collector on 127.0.0.1: nothing lost, nothing stored twice.

The last test runs spool + uploader in a child process killed with -9 while a batch is in flight.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import random
import signal
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from qiancheng.core.result import Result, Target
from qiancheng.core.wire import RESULTS_PATH, Batch, decode_batch
from qiancheng.probes.collector_client import CollectorClient
from qiancheng.probes.spool import Spool
from qiancheng.probes.uploader import Uploader, backoff_delay, retry_after_seconds
from tests.conftest import ROOT, free_port

TOKEN = "s3cret-token-value"

#: What the scripted collector does with one request: answer a status (with headers), or
#: "drop" (close the connection before storing) / "store_then_drop" (store, then close without answering).
Action = int | tuple[int, dict[str, str]] | str


@dataclass
class Seen:
    """One request as the collector saw it."""

    batch: Batch
    headers: dict[str, str]
    status: int | str
    at: float

    @property
    def seqs(self) -> list[int]:
        return [r.seq for r in self.batch.results]


@dataclass
class ScriptedCollector:
    """A real aiohttp server that validates like the collector, dedups by batch id, and answers as scripted."""

    token: str = TOKEN
    script: list[Action] = field(default_factory=list)
    max_results: int | None = None  # 413 above this many results
    max_detail: int | None = None  # 413 when one result's detail is longer (a result too big on its own)
    reject_target: str | None = None  # 422 for a batch holding a result for this target
    hang: bool = False  # never answer
    answer_delay: float = 0.0  # seconds before answering (widens the window a kill can land in)
    seen: list[Seen] = field(default_factory=list)
    stored: list[tuple[str, int]] = field(default_factory=list)  # (probe_id, seq)
    stored_batches: set[str] = field(default_factory=set)
    port: int = 0
    _runner: web.AppRunner | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)  # ends hanging handlers at stop

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> ScriptedCollector:
        app = web.Application()
        app.router.add_post(RESULTS_PATH, self._handle)
        # auto_decompress=False: check the bytes on the wire really are gzip, as the real collector will see them
        self._runner = web.AppRunner(app, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def stored_seqs(self) -> list[int]:
        return sorted(seq for _, seq in self.stored)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unknown token"}, status=401)
        assert request.headers.get("Content-Encoding") == "gzip"
        try:
            batch = decode_batch(gzip.decompress(body))
        except msgspec.ValidationError as error:
            return web.json_response({"error": str(error)}, status=422)
        seen = Seen(batch, dict(request.headers), 0, asyncio.get_running_loop().time())
        self.seen.append(seen)
        if self.hang:
            await self._release.wait()
            return web.Response(status=503)
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        action = self.script.pop(0) if self.script else None
        seen.status = action if isinstance(action, (int, str)) else action[0] if action else 200
        if action == "drop":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if isinstance(action, int):
            return web.json_response({"error": "scripted"}, status=action)
        if isinstance(action, tuple):
            return web.json_response({"error": "scripted"}, status=action[0], headers=action[1])
        if self.max_results is not None and len(batch.results) > self.max_results:
            seen.status = 413
            return web.json_response({"error": "too many results"}, status=413)
        if self.max_detail is not None and any(len(r.detail or "") > self.max_detail for r in batch.results):
            seen.status = 413
            return web.json_response({"error": "body too large"}, status=413)
        for index, result in enumerate(batch.results):
            if result.target.name == self.reject_target:
                seen.status = 422
                return web.json_response({"error": "unknown target", "path": f"$.results[{index}].target.name"},
                                         status=422)
        if batch.batch_id not in self.stored_batches:  # idempotent ingest, as the real collector
            self.stored_batches.add(batch.batch_id)
            self.stored += [(batch.probe_id, r.seq) for r in batch.results]
        if action == "store_then_drop":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        return web.json_response({"stored": len(batch.results)})


def result(index: int, target: str = "edge", detail: str | None = None) -> Result:
    return Result(kind="icmp", target=Target(name=target, address="198.18.0.1"), start_ns=1_700_000_000 + index,
                  duration_seconds=0.5, success=True, detail=detail, figures={"rtt_median_seconds": 0.002})


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


class Rig:
    """A spool, a collector client, collectors and uploaders for one test; all stopped at teardown."""

    def __init__(self, tmp_path: Path, client: CollectorClient) -> None:
        self.spool = Spool(tmp_path / "spool.db", max_bytes=1 << 30)
        self.client = client
        self.collectors: list[ScriptedCollector] = []
        self.tasks: list[tuple[Uploader, asyncio.Task[None]]] = []

    async def collector(self, port: int = 0, **options: Any) -> ScriptedCollector:
        collector = await ScriptedCollector(**options).start(port)
        self.collectors.append(collector)
        return collector

    def uploader(self, url: str, **options: Any) -> Uploader:
        settings: dict[str, Any] = dict(
            spool=self.spool, client=self.client, url=url, token=TOKEN, probe_id="city-a-01", city="city-a",
            isp="isp-1", labels={"site": "tower-3"}, batch_max_results=500, batch_max_age=0.05,
            request_timeout=2.0, backoff_base=0.05, backoff_cap=0.2, rng=random.Random(7),
        )
        return Uploader(**{**settings, **options})

    def start(self, uploader: Uploader) -> asyncio.Task[None]:
        task = asyncio.create_task(uploader.run())
        self.tasks.append((uploader, task))
        return task

    async def add(self, *results: Result) -> list[int]:
        return [await self.spool.add(r) for r in results]

    async def backlog(self) -> int:
        return (await self.spool.counters()).backlog

    async def close(self) -> None:
        for uploader, task in self.tasks:
            uploader.stop()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
        for collector in self.collectors:
            await collector.stop()
        self.spool.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    client = CollectorClient(None, "qiancheng-test")
    made = Rig(tmp_path, client)
    try:
        yield made
    finally:
        await made.close()
        await client.close()


# ---------------------------------------------------------------------- pure helpers


def test_backoff_delay_is_full_jitter_within_bounds() -> None:
    rng, reference = random.Random(42), random.Random(42)
    for attempt in range(12):
        ceiling = min(60.0, 1.0 * 2**attempt)
        delay = backoff_delay(attempt, 1.0, 60.0, rng)
        assert delay == reference.uniform(0.0, ceiling)  # exactly full jitter, nothing added
        assert 0.0 <= delay <= ceiling
    samples = [backoff_delay(3, 0.5, 60.0, rng) for _ in range(2000)]
    assert 0.0 <= min(samples) < 0.2 and 3.8 < max(samples) <= 4.0  # spread over the whole [0, 0.5·2³]
    assert all(0.0 <= backoff_delay(10_000, 1.0, 60.0, rng) <= 60.0 for _ in range(100))  # no overflow


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("1", 1.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("86400", 300.0),  # capped
        ("-5", 0.0),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: go now
    ],
)
def test_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert retry_after_seconds(header, now=1_700_000_000.0) == expected


def test_retry_after_http_date_in_the_future() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    header = format_datetime(now + timedelta(seconds=42), usegmt=True)
    assert retry_after_seconds(header, now=now.timestamp()) == pytest.approx(42.0)


async def test_identity_that_does_not_fit_the_wire_fails_at_construction(rig: Rig) -> None:
    with pytest.raises(ValueError, match="probe_id"):
        rig.uploader("http://127.0.0.1:9", probe_id="bad id!")
    with pytest.raises(ValueError, match="labels"):
        rig.uploader("http://127.0.0.1:9", labels={"Bad-Name": "x"})


# ---------------------------------------------------------------------- against a real server


async def test_every_result_arrives_once_through_outage_503_and_dropped_connections(rig: Rig) -> None:
    port = free_port()
    uploader = rig.uploader(f"http://127.0.0.1:{port}/", batch_max_results=20)
    await rig.add(*(result(i) for i in range(30)))
    rig.start(uploader)

    # the collector is down: connection refused, retried with backoff, nothing leaves the spool
    await wait_until(lambda: _true(uploader.counters().consecutive_failures >= 2), 5, "failures while down")
    assert await rig.backlog() == 30
    assert "ConnectionRefusedError" in uploader.counters().last_error

    collector = await rig.collector(port, script=[(503, {"Retry-After": "1"}), "drop", "store_then_drop", 503])
    more = [result(i) for i in range(30, 60)]
    for r in more:
        await rig.spool.add(r)
        uploader.notify()
    await wait_until(lambda: _eq(rig.backlog(), 0), 15, "spool drained")

    assert collector.stored_seqs() == list(range(1, 61))  # every result, exactly once
    assert {probe for probe, _ in collector.stored} == {"city-a-01"}
    # the same batch id (and content) on every retry of the first batch
    first = collector.seen[0]
    retries = [s for s in collector.seen if s.batch.batch_id == first.batch.batch_id]
    assert [s.status for s in retries] == [503, "drop", "store_then_drop", 503, 200]
    assert all(s.seqs == first.seqs == list(range(1, 21)) for s in retries)
    # Retry-After: 1 was honoured (the backoff alone would have retried within 0.2 s)
    assert retries[1].at - retries[0].at >= 0.95
    counters = uploader.counters()
    assert counters.consecutive_failures == 0 and counters.last_error == ""
    assert counters.results_acked == 60 and counters.batches_sent == 3
    spooled = await rig.spool.counters()
    assert (spooled.acked_total, spooled.dropped_total, spooled.rejected_total) == (60, 0, 0)


async def test_body_is_a_gzip_json_batch_with_identity_and_stats(rig: Rig) -> None:
    collector = await rig.collector()
    uploader = rig.uploader(collector.url)
    await rig.add(result(1), result(2))
    rig.start(uploader)
    await wait_until(lambda: _eq(rig.backlog(), 0), 5, "delivered")
    (seen,) = collector.seen
    assert seen.headers["Content-Encoding"] == "gzip"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    batch = seen.batch
    assert (batch.probe_id, batch.city, batch.isp) == ("city-a-01", "city-a", "isp-1")
    assert batch.labels == {"site": "tower-3"}
    assert 8 <= len(batch.batch_id) <= 64
    assert [r.seq for r in batch.results] == [1, 2] and batch.results[0].figures == {"rtt_median_seconds": 0.002}
    assert batch.stats["spool_backlog"] == 2 and batch.stats["measured_total"] == 2
    assert batch.stats["spool_dropped_total"] == 0 and batch.stats["acked_total"] == 0


async def test_health_rides_in_stats_and_the_plan_in_a_header_read_at_each_send(rig: Rig) -> None:
    collector = await rig.collector()
    plan = {"version": ""}
    uploader = rig.uploader(collector.url, health=lambda: {"uptime_seconds": 12.5, "clock_synced": 1.0},
                            plan_version=lambda: plan["version"], batch_max_results=1)  # fmt: skip
    await rig.add(result(1))
    rig.start(uploader)
    await wait_until(lambda: _eq(rig.backlog(), 0), 5, "the first batch delivered")
    plan["version"] = "0123456789abcdef"  # a plan applied between two sends
    await rig.add(result(2))
    uploader.notify()  # as the agent does after each result it spools
    await wait_until(lambda: _eq(rig.backlog(), 0), 5, "the second batch delivered")
    first, second = collector.seen
    assert "Qiancheng-Plan" not in first.headers, "no plan yet: no header"
    assert second.headers["Qiancheng-Plan"] == "0123456789abcdef"
    assert second.batch.stats["uptime_seconds"] == 12.5 and second.batch.stats["clock_synced"] == 1.0
    assert second.batch.stats["spool_backlog"] == 1, "the spool's own figures stay beside them"


async def test_batches_go_when_full_or_old_enough(rig: Rig) -> None:
    collector = await rig.collector()
    uploader = rig.uploader(collector.url, batch_max_results=5, batch_max_age=1.5)
    rig.start(uploader)
    for i in range(12):
        await rig.spool.add(result(i))
        uploader.notify()
    # two full batches go at once, without waiting batch_max_age between them
    await wait_until(lambda: _eq(rig.backlog(), 2), 1.0, "two full batches acknowledged")
    assert [len(s.batch.results) for s in collector.seen] == [5, 5]
    # the two left over wait for batch_max_age, then go together
    await wait_until(lambda: _eq(rig.backlog(), 0), 5, "the young remainder after its age")
    assert [len(s.batch.results) for s in collector.seen] == [5, 5, 2]
    assert collector.seen[2].at - collector.seen[0].at >= 1.2


async def test_413_splits_until_batches_fit_and_every_half_arrives(rig: Rig) -> None:
    collector = await rig.collector(max_results=3)
    uploader = rig.uploader(collector.url, batch_max_results=10)
    await rig.add(*(result(i) for i in range(10)))
    rig.start(uploader)
    await wait_until(lambda: _eq(rig.backlog(), 0), 5, "every split batch delivered")
    assert collector.stored_seqs() == list(range(1, 11))
    assert uploader.counters().batches_split >= 1
    assert (await rig.spool.counters()).rejected_total == 0
    assert all(len(s.batch.results) <= 3 for s in collector.seen if s.status == 200)
    # later batches are formed small enough from the start
    await rig.add(*(result(i) for i in range(10, 14)))
    uploader.notify()
    before = len(collector.seen)
    await wait_until(lambda: _eq(rig.backlog(), 0), 5, "later results delivered")
    assert all(s.status == 200 for s in collector.seen[before:])


async def test_413_for_one_result_quarantines_only_that_result(rig: Rig) -> None:
    collector = await rig.collector(max_detail=100)
    uploader = rig.uploader(collector.url, batch_max_results=8)
    await rig.add(*(result(i, detail="x" * 500 if i == 5 else None) for i in range(8)))
    rig.start(uploader)
    await wait_until(lambda: _eq(rig.backlog(), 0), 5, "all delivered or set aside")
    assert collector.stored_seqs() == [1, 2, 3, 4, 5, 7, 8]
    counters = await rig.spool.counters()
    assert (counters.rejected_total, counters.acked_total) == (1, 7)


async def test_422_quarantines_that_batch_and_the_rest_keeps_flowing(
    rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    collector = await rig.collector(reject_target="poison")
    uploader = rig.uploader(collector.url, batch_max_results=3)
    await rig.add(*(result(i, target="poison" if i == 4 else "edge") for i in range(9)))
    with caplog.at_level(logging.INFO):
        rig.start(uploader)
        await wait_until(lambda: _eq(rig.backlog(), 0), 5, "drained")
    assert collector.stored_seqs() == [1, 2, 3, 7, 8, 9]
    spooled = await rig.spool.counters()
    assert (spooled.rejected_total, spooled.acked_total, spooled.dropped_total) == (3, 6, 0)
    assert uploader.counters().batches_quarantined == 1
    assert any("spool_quarantined" in r.getMessage() for r in caplog.records)
    with sqlite3.connect(tmp_path / "spool.db") as db:
        (reason,) = {row[0] for row in db.execute("SELECT reason FROM rejected")}
    assert reason.startswith("http 422: ")
    answer = json.loads(reason.removeprefix("http 422: "))
    assert answer == {"error": "unknown target", "path": "$.results[1].target.name"}


async def test_401_keeps_results_logs_a_config_problem_and_recovers(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    collector = await rig.collector(token="the-collector-expects-this")
    uploader = rig.uploader(collector.url)
    await rig.add(*(result(i) for i in range(4)))
    with caplog.at_level(logging.DEBUG):
        rig.start(uploader)
        await wait_until(lambda: _true(uploader.counters().consecutive_failures >= 3), 5, "repeated 401")
        assert await rig.backlog() == 4
        counters = await rig.spool.counters()
        assert counters.rejected_total == counters.dropped_total == counters.acked_total == 0
        assert uploader.counters().last_error == "http 401"
        collector.token = TOKEN  # the operator fixes the collector's config
        await wait_until(lambda: _eq(rig.backlog(), 0), 5, "delivered after the fix")
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("upload_unauthorized") and 'error="http 401"' in m for m in messages)
    assert not any(TOKEN in m for m in messages), "the token must never be logged"
    assert collector.stored_seqs() == [1, 2, 3, 4]


async def test_flush_pushes_everything_pending_at_once(rig: Rig) -> None:
    collector = await rig.collector()
    uploader = rig.uploader(collector.url, batch_max_results=3, batch_max_age=60.0)
    rig.start(uploader)
    await rig.add(*(result(i) for i in range(7)))
    uploader.notify()
    assert await asyncio.wait_for(uploader.flush(5.0), 2.0) == 0
    assert collector.stored_seqs() == list(range(1, 8))


async def test_flush_without_a_collector_returns_within_its_timeout(rig: Rig) -> None:
    uploader = rig.uploader(f"http://127.0.0.1:{free_port()}", batch_max_age=60.0)
    await rig.add(*(result(i) for i in range(5)))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await uploader.flush(0.3) == 5  # works without run() too
    assert loop.time() - started < 1.0
    assert await rig.backlog() == 5


async def test_stop_abandons_a_hanging_request_and_the_retry_keeps_the_batch_id(rig: Rig) -> None:
    hanging = await rig.collector(hang=True)
    uploader = rig.uploader(hanging.url, request_timeout=30.0)
    await rig.add(*(result(i) for i in range(3)))
    task = rig.start(uploader)
    await wait_until(lambda: _true(len(hanging.seen) == 1), 5, "request in flight")
    uploader.stop()
    await asyncio.wait_for(task, 1.0)
    assert await rig.backlog() == 3

    # the next uploader (a restart, or a reload) sends the same batch under the same id
    collector = await rig.collector()
    rig.start(rig.uploader(collector.url))
    await wait_until(lambda: _eq(rig.backlog(), 0), 5, "delivered")
    assert collector.seen[0].batch.batch_id == hanging.seen[0].batch.batch_id


async def test_request_timeout_is_retried(rig: Rig) -> None:
    hanging = await rig.collector(hang=True)
    uploader = rig.uploader(hanging.url, request_timeout=0.2)
    await rig.add(result(1))
    rig.start(uploader)
    await wait_until(lambda: _true(uploader.counters().requests_failed >= 2), 5, "timeouts retried")
    assert "Timeout" in uploader.counters().last_error
    assert len({s.batch.batch_id for s in hanging.seen}) == 1
    assert await rig.backlog() == 1


async def _true(value: bool) -> bool:
    return value


async def _eq(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


# ---------------------------------------------------------------------- a real probe process, killed with -9

_PROBE_PROCESS = textwrap.dedent(
    """
    import asyncio, sys
    from qiancheng.core.result import Result, Target
    from qiancheng.probes.collector_client import CollectorClient
    from qiancheng.probes.spool import Spool
    from qiancheng.probes.uploader import Uploader

    async def main(path: str, url: str, count: int, finish: bool) -> None:
        spool = Spool(path, max_bytes=1 << 30)
        client = CollectorClient(None, "qiancheng-test")
        uploader = Uploader(spool=spool, client=client, url=url, token="s3cret-token-value",
                            probe_id="city-k-01", batch_max_results=7, batch_max_age=0.05,
                            backoff_base=0.05, backoff_cap=0.2)
        task = asyncio.create_task(uploader.run())
        target = Target(name="edge", address="198.18.0.1")
        for _ in range(count):
            measured = Result(kind="icmp", target=target, start_ns=1, duration_seconds=0.0, success=True)
            seq = await spool.add(measured)
            uploader.notify()
            print(seq, flush=True)
            await asyncio.sleep(0.003)
        if finish:
            print("remaining", await uploader.flush(10.0), flush=True)
            uploader.stop()
            await task
        else:
            await asyncio.sleep(3600)
        await client.close()
        spool.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "finish"))
    """
)


async def _probe_process(path: Path, url: str, count: int, mode: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PROBE_PROCESS, str(path), url, str(count), mode,
        stdout=asyncio.subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def test_kill_9_during_uploads_then_restart_delivers_every_result_once(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    # Until the kill, every answer fails (some after storing): the first batch is still pending then.
    failures: list[Action] = [503, "store_then_drop", (503, {"Retry-After": "0"}), "drop"]
    collector = await ScriptedCollector(answer_delay=0.03, script=failures * 1000).start()
    try:
        first = await _probe_process(path, collector.url, 10_000, "forever")
        assert first.stdout is not None
        printed = [int(await first.stdout.readline()) for _ in range(150)]
        first.send_signal(signal.SIGKILL)
        rest, _ = await first.communicate()
        printed += [int(line) for line in rest.split()]
        in_flight_before_kill = {s.batch.batch_id for s in collector.seen}
        await asyncio.sleep(0.1)  # let the collector finish answering the dead probe's request
        collector.script[:] = failures * 2  # the restarted probe meets a few failures, then a healthy collector
        seen_before_kill = len(collector.seen)

        second = await _probe_process(path, collector.url, 40, "finish")
        output, _ = await asyncio.wait_for(second.communicate(), 30)
        lines = output.decode().split()
        assert second.returncode == 0
        assert lines[-2:] == ["remaining", "0"]
        printed += [int(seq) for seq in lines[:-2]]
    finally:
        await collector.stop()

    # the restart continued the numbering (a result committed just before the kill may not have been printed)
    assert printed == sorted(set(printed)) and printed[0] == 1
    stored = collector.stored_seqs()
    assert stored == sorted(set(stored)), "a result was stored twice"
    assert set(printed) <= set(stored), "a result whose add() returned was lost"
    spool = Spool(path, max_bytes=1 << 30)
    try:
        counters = await spool.counters()
    finally:
        spool.close()
    assert counters.backlog == 0
    assert stored == list(range(1, counters.measured_total + 1))
    assert counters.acked_total == counters.measured_total and counters.dropped_total == 0
    # A batch id names the same results on every attempt, before and after the kill, and no result was
    # ever sent under two ids: the batch in flight at the kill was retried under its id by the restart.
    by_id: dict[str, list[int]] = {}
    for seen in collector.seen:
        assert by_id.setdefault(seen.batch.batch_id, seen.seqs) == seen.seqs
    every = [seq for seqs in by_id.values() for seq in seqs]
    assert len(every) == len(set(every))
    assert in_flight_before_kill & {s.batch.batch_id for s in collector.seen[seen_before_kill:]}
