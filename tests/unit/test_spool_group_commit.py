"""Spool group commit: results added in one tick share a transaction, every add returns only once its result
is on disk (also under kill -9 with many adds in flight), close() commits what still waits, and a bad result
cannot sink the rest of its group."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgspec
import pytest

from qiancheng.core.result import Result, Target
from qiancheng.probes.spool import Spool

ROOT = Path(__file__).resolve().parents[2]


def result(index: int = 0) -> Result:
    return Result(kind="icmp", target=Target(name=f"t{index}", address="127.0.0.1"), start_ns=index,
                  duration_seconds=0.001, success=True, figures={"rtt_median_seconds": 0.001})


def stored_seqs(path: Path) -> list[int]:
    with sqlite3.connect(path) as db:
        return [int(seq) for (seq,) in db.execute("SELECT seq FROM results ORDER BY seq")]


async def test_adds_in_one_tick_share_one_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=1 << 30, commit_delay=0.05)
    groups: list[int] = []
    add_group = spool._add_group

    def counting(results: list[Result]) -> list[int | BaseException]:
        groups.append(len(results))
        return add_group(results)

    monkeypatch.setattr(spool, "_add_group", counting)
    try:
        seqs = await asyncio.gather(*(spool.add(result(i)) for i in range(200)))
        assert seqs == list(range(1, 201))  # numbered in the order they were added
        assert groups == [200]
        counters = await spool.counters()
        assert (counters.measured_total, counters.backlog) == (200, 200)
        # a later add starts a new group
        assert await spool.add(result()) == 201
        assert groups == [200, 1]
    finally:
        spool.close()
    assert stored_seqs(tmp_path / "spool.db") == list(range(1, 202))


async def test_an_add_returns_only_after_its_commit(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=1 << 30, commit_delay=0.2)
    try:
        adding = asyncio.ensure_future(spool.add(result()))
        await asyncio.sleep(0.05)
        assert not adding.done()  # still waiting for its group
        assert stored_seqs(tmp_path / "spool.db") == []
        assert await adding == 1
        assert stored_seqs(tmp_path / "spool.db") == [1]  # visible to another connection: committed
    finally:
        spool.close()


async def test_settle_waits_for_the_group_of_a_cancelled_add(tmp_path: Path) -> None:
    # The agent's stop cancels running tests; one may sit in add() waiting for its group. settle() lets
    # the final flush see that result instead of leaving it for the next start.
    spool = Spool(tmp_path / "spool.db", max_bytes=1 << 30, commit_delay=0.2)
    try:
        adding = asyncio.ensure_future(spool.add(result()))
        await asyncio.sleep(0.01)
        adding.cancel()
        assert stored_seqs(tmp_path / "spool.db") == []
        await spool.settle()
        assert stored_seqs(tmp_path / "spool.db") == [1]
        assert (await spool.counters()).backlog == 1
        await spool.settle()  # nothing waiting: returns at once
    finally:
        spool.close()


async def test_close_commits_results_still_waiting_for_their_group(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=1 << 30, commit_delay=30.0)
    adds = [asyncio.ensure_future(spool.add(result(i))) for i in range(3)]
    await asyncio.sleep(0)  # each add has queued its result
    spool.close()
    assert await asyncio.gather(*adds) == [1, 2, 3]
    assert stored_seqs(tmp_path / "spool.db") == [1, 2, 3]
    with pytest.raises(RuntimeError, match="closed"):
        await spool.add(result())


async def test_a_result_that_cannot_be_stored_fails_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=1 << 30)
    unencodable = msgspec.structs.replace(result(1), figures={"rtt_median_seconds": object()})
    try:
        outcomes = await asyncio.gather(spool.add(result(0)), spool.add(unencodable), spool.add(result(2)),
                                        return_exceptions=True)
        assert outcomes[0] == 1 and outcomes[2] == 2
        assert isinstance(outcomes[1], TypeError)
        counters = await spool.counters()
        assert (counters.measured_total, counters.backlog) == (2, 2)
    finally:
        spool.close()
    assert stored_seqs(tmp_path / "spool.db") == [1, 2]


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from qiancheng.core.result import Result, Target
    from qiancheng.probes.spool import Spool

    async def writer(spool: Spool, index: int) -> None:
        target = Target(name=f"t{index}", address="127.0.0.1")
        while True:
            seq = await spool.add(Result(kind="icmp", target=target, start_ns=1, duration_seconds=0.0, success=True))
            print(seq, flush=True)

    async def main() -> None:
        spool = Spool(sys.argv[1], max_bytes=1 << 30, commit_delay=0.005)
        await asyncio.gather(*(writer(spool, i) for i in range(50)))

    asyncio.run(main())
    """
)


def test_every_seq_returned_by_concurrent_adds_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, cwd=ROOT,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert child.stdout is not None
    printed: list[int] = []
    deadline = time.monotonic() + 20
    while len(printed) < 2000 and time.monotonic() < deadline:
        line = child.stdout.readline()
        assert line, "the child exited early"
        printed.append(int(line))
    child.send_signal(signal.SIGKILL)  # fifty adds in flight, very likely mid-group
    rest, _ = child.communicate(timeout=10)
    printed += [int(line) for line in rest.split()]
    assert len(printed) >= 2000
    stored = stored_seqs(path)
    assert set(printed) <= set(stored)
    assert stored == list(range(stored[0], stored[0] + len(stored)))  # no gap, no repeat


def test_a_spool_serves_one_event_loop_after_another(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=1 << 30)
    try:
        assert asyncio.run(spool.add(result(0))) == 1
        assert asyncio.run(spool.add(result(1))) == 2  # the first loop's committer ended with its loop
    finally:
        spool.close()
    assert stored_seqs(tmp_path / "spool.db") == [1, 2]


async def test_add_many_numbers_its_results_in_order_with_those_added_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=1 << 30, commit_delay=0.02)
    alone, many = await asyncio.gather(spool.add(result(0)), spool.add_many([result(i) for i in range(1, 6)]))
    assert [alone, *many] == list(range(alone, alone + 6))
    assert stored_seqs(tmp_path / "spool.db") == [alone, *many]
    spool.close()


async def test_counters_follow_every_operation_without_asking_the_database(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=1 << 30, commit_delay=0.0)
    await spool.add_many([result(i) for i in range(4)])
    counters = await spool.counters()
    assert (counters.measured_total, counters.backlog) == (4, 4)
    batch = await spool.next_batch(3)
    assert batch is not None
    await spool.ack(batch.batch_id)
    counters = await spool.counters()
    assert (counters.measured_total, counters.acked_total, counters.backlog) == (4, 3, 1)
    with sqlite3.connect(path) as db:  # what the database itself says
        (spooled_ns,) = db.execute("SELECT spooled_ns FROM results ORDER BY seq LIMIT 1").fetchone()
        backlog_bytes = db.execute("SELECT value FROM meta WHERE key = 'backlog_bytes'").fetchone()[0]
    assert (counters.oldest_pending_ns, counters.backlog_bytes) == (spooled_ns, backlog_bytes)
    spool.close()
