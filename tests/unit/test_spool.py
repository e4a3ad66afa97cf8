"""Spool: seq numbering, durability across reopen and kill -9, drop-oldest bound, batches, ack, split, quarantine."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from qiancheng.core.result import Result, Target
from qiancheng.core.wire import MAX_RESULTS_PER_BATCH
from qiancheng.probes.spool import PendingBatch, Spool

ROOT = Path(__file__).resolve().parents[2]


def result(index: int = 0, detail_bytes: int = 0) -> Result:
    """A small result; `detail_bytes` pads it so tests can reason about sizes."""
    return Result(
        kind="tcp",
        target=Target(name=f"t{index}", address="127.0.0.1:443"),
        start_ns=1_700_000_000_000_000_000 + index,
        duration_seconds=0.01,
        success=True,
        detail="x" * detail_bytes or None,
        figures={"rtt_median_seconds": 0.001 * index},
    )


def payload_size(index: int = 0, detail_bytes: int = 0, seq: int = 1) -> int:
    return len(msgspec.json.encode(msgspec.structs.replace(result(index, detail_bytes), seq=seq)))


@pytest.fixture
async def make_spool(tmp_path: Path) -> AsyncIterator[Callable[..., Spool]]:
    """Opens spools on tmp_path/spool.db (or another name) and closes them all at teardown."""
    opened: list[Spool] = []

    def make(max_bytes: int = 1 << 30, name: str = "spool.db", **options: object) -> Spool:
        spool = Spool(tmp_path / name, max_bytes=max_bytes, **options)  # type: ignore[arg-type]
        opened.append(spool)
        return spool

    yield make
    for spool in opened:
        spool.close()


async def drain(spool: Spool) -> list[PendingBatch]:
    batches = []
    while (batch := await spool.next_batch(MAX_RESULTS_PER_BATCH)) is not None:
        batches.append(batch)
        await spool.ack(batch.batch_id)
    return batches


async def test_seq_is_monotonic_and_persists_across_reopen(make_spool: Callable[..., Spool], tmp_path: Path) -> None:
    spool = make_spool(name="nested/dir/spool.db")  # parent directories are created
    assert [await spool.add(result(i)) for i in range(5)] == [1, 2, 3, 4, 5]
    batch = await spool.next_batch(100)
    assert batch is not None and [r.seq for r in batch.results] == [1, 2, 3, 4, 5]
    assert [r.target.name for r in batch.results] == [f"t{i}" for i in range(5)]
    await spool.ack(batch.batch_id)  # an empty spool must not restart the numbering
    spool.close()

    reopened = make_spool(name="nested/dir/spool.db")
    assert await reopened.add(result()) == 6
    counters = await reopened.counters()
    assert (counters.measured_total, counters.acked_total, counters.backlog) == (6, 5, 1)


async def test_a_new_spool_numbers_from_first_seq_and_an_existing_one_goes_on(make_spool: Callable[..., Spool]) -> None:
    # A reinstalled probe starts a new spool from the wall clock, above every seq it sent before.
    spool = make_spool(first_seq=1_795_000_000_000_000)
    assert [await spool.add(result(i)) for i in range(2)] == [1_795_000_000_000_000, 1_795_000_000_000_001]
    spool.close()
    reopened = make_spool(first_seq=5)
    assert await reopened.add(result()) == 1_795_000_000_000_002


async def test_file_is_wal_with_full_sync(make_spool: Callable[..., Spool], tmp_path: Path) -> None:
    spool = make_spool()
    await spool.add(result())
    with sqlite3.connect(tmp_path / "spool.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "spool.db-wal").exists()


async def test_counters_track_everything(make_spool: Callable[..., Spool]) -> None:
    clock = iter(range(1000, 100_000, 1000))
    spool = make_spool(clock=lambda: next(clock))
    empty = await spool.counters()
    assert (empty.backlog, empty.backlog_bytes, empty.oldest_pending_ns, empty.measured_total) == (0, 0, None, 0)
    for i in range(4):
        await spool.add(result(i))
    counters = await spool.counters()
    assert counters.backlog == 4 and counters.measured_total == 4
    assert counters.backlog_bytes == sum(payload_size(i, seq=i + 1) for i in range(4))
    assert counters.oldest_pending_ns == 1000
    batch = await spool.next_batch(2)
    assert batch is not None and batch.size_bytes == payload_size(0, seq=1) + payload_size(1, seq=2)
    assert await spool.ack(batch.batch_id) == 2
    counters = await spool.counters()
    assert (counters.backlog, counters.acked_total, counters.oldest_pending_ns) == (2, 2, 3000)
    assert counters.backlog_bytes == payload_size(2, seq=3) + payload_size(3, seq=4)


async def test_full_spool_drops_oldest_counts_and_logs_once_per_event(
    make_spool: Callable[..., Spool], caplog: pytest.LogCaptureFixture
) -> None:
    one = payload_size(0, detail_bytes=200, seq=10)
    spool = make_spool(max_bytes=one * 5 + one // 2)  # room for five results
    for i in range(5):
        await spool.add(result(0, detail_bytes=200))
    assert (await spool.counters()).dropped_total == 0
    with caplog.at_level(logging.WARNING, logger="qiancheng.spool"):
        await spool.add(result(0, detail_bytes=200))
        await spool.add(result(0, detail_bytes=200))  # within the log interval: counted, logged later
    counters = await spool.counters()
    assert (counters.dropped_total, counters.backlog, counters.measured_total) == (2, 5, 7)
    assert counters.backlog_bytes <= spool.max_bytes
    drop_lines = [r.getMessage() for r in caplog.records if "spool_full_dropped_oldest" in r.getMessage()]
    assert drop_lines == [drop_lines[0]] and "results=1 " in drop_lines[0] and "dropped_total=1" in drop_lines[0]
    batch = await spool.next_batch(100)
    assert batch is not None and [r.seq for r in batch.results] == [3, 4, 5, 6, 7]  # the oldest went

    # a big result frees as many old ones as it needs, in one event
    spool.close()
    caplog.clear()
    reopened = make_spool(max_bytes=one * 5 + one // 2)
    assert (await reopened.counters()).dropped_total == 2  # persistent
    with caplog.at_level(logging.WARNING, logger="qiancheng.spool"):
        assert await reopened.add(result(0, detail_bytes=200 + 2 * one)) == 8
    counters = await reopened.counters()
    assert (counters.dropped_total, counters.backlog) == (5, 3)
    assert [r.getMessage() for r in caplog.records if "results=3 " in r.getMessage()]


async def test_result_larger_than_the_spool_is_dropped_itself(make_spool: Callable[..., Spool]) -> None:
    spool = make_spool(max_bytes=500)
    await spool.add(result())
    assert await spool.add(result(0, detail_bytes=1000)) == 2
    counters = await spool.counters()
    assert (counters.measured_total, counters.dropped_total, counters.backlog, counters.backlog_bytes) == (2, 2, 0, 0)
    assert await spool.add(result()) == 3  # the seq of the dropped result is not reused


async def test_batch_id_is_stable_across_retries_and_reopen(make_spool: Callable[..., Spool]) -> None:
    spool = make_spool()
    for i in range(7):
        await spool.add(result(i))
    first = await spool.next_batch(3)
    again = await spool.next_batch(3)
    assert first is not None and again is not None
    assert again.batch_id == first.batch_id and again.results == first.results
    assert [r.seq for r in first.results] == [1, 2, 3]
    # a larger limit does not change a batch already formed (its content is what the id names)
    bigger = await spool.next_batch(100)
    assert bigger is not None and bigger.batch_id == first.batch_id and len(bigger.results) == 3
    spool.close()

    reopened = make_spool()
    after_restart = await reopened.next_batch(3)
    assert after_restart is not None and after_restart.batch_id == first.batch_id
    assert after_restart.results == first.results
    await reopened.ack(first.batch_id)
    following = await reopened.next_batch(3)
    assert following is not None and following.batch_id != first.batch_id
    assert [r.seq for r in following.results] == [4, 5, 6]


async def test_batch_gets_a_new_id_when_drops_change_its_content(make_spool: Callable[..., Spool]) -> None:
    one = payload_size(0, detail_bytes=100, seq=10)
    spool = make_spool(max_bytes=one * 4 + one // 2)
    for _ in range(4):
        await spool.add(result(0, detail_bytes=100))
    batch = await spool.next_batch(3)
    assert batch is not None and [r.seq for r in batch.results] == [1, 2, 3]
    await spool.add(result(0, detail_bytes=100))  # drops seq 1, part of the formed batch
    changed = await spool.next_batch(3)
    assert changed is not None and changed.batch_id != batch.batch_id
    assert [r.seq for r in changed.results] == [2, 3]
    assert await spool.ack(batch.batch_id) == 0  # the old id names nothing any more
    assert await spool.ack(changed.batch_id) == 2
    assert [r.seq for b in await drain(spool) for r in b.results] == [4, 5]


async def test_ack_removes_only_that_batch(make_spool: Callable[..., Spool]) -> None:
    spool = make_spool()
    for i in range(5):
        await spool.add(result(i))
    batch = await spool.next_batch(2)
    assert batch is not None
    assert await spool.ack(batch.batch_id) == 2
    assert await spool.ack(batch.batch_id) == 0  # a repeated ack is harmless
    counters = await spool.counters()
    assert (counters.backlog, counters.acked_total) == (3, 2)
    assert [r.seq for b in await drain(spool) for r in b.results] == [3, 4, 5]
    assert await spool.next_batch(10) is None


async def test_split_makes_two_new_batches_oldest_first(make_spool: Callable[..., Spool]) -> None:
    spool = make_spool()
    for i in range(5):
        await spool.add(result(i))
    batch = await spool.next_batch(5)
    assert batch is not None
    older, newer = await spool.split(batch.batch_id)
    assert len({older, newer, batch.batch_id}) == 3
    first = await spool.next_batch(5)
    assert first is not None and first.batch_id == older and [r.seq for r in first.results] == [1, 2]
    await spool.ack(older)
    second = await spool.next_batch(5)
    assert second is not None and second.batch_id == newer and [r.seq for r in second.results] == [3, 4, 5]
    assert await spool.split("no-such-batch") == ()
    single = await spool.split(newer)
    alone = await spool.next_batch(5)
    assert alone is not None and alone.batch_id == single[0] and len(alone.results) == 1
    with pytest.raises(ValueError, match="one result"):
        await spool.split(alone.batch_id)


async def test_quarantine_moves_batch_aside_counts_and_logs(
    make_spool: Callable[..., Spool], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = make_spool()
    for i in range(5):
        await spool.add(result(i))
    batch = await spool.next_batch(2)
    assert batch is not None
    with caplog.at_level(logging.ERROR, logger="qiancheng.spool"):
        assert await spool.quarantine(batch.batch_id, 'http 422: {"error":"bad kind","path":"$.results[0].kind"}') == 2
    assert any("spool_quarantined" in r.getMessage() and "results=2" in r.getMessage() for r in caplog.records)
    counters = await spool.counters()
    assert (counters.rejected_total, counters.backlog, counters.acked_total) == (2, 3, 0)
    # kept for operators, with the collector's reason
    with sqlite3.connect(tmp_path / "spool.db") as db:
        rows = db.execute("SELECT seq, batch_id, reason FROM rejected ORDER BY seq").fetchall()
    assert [(seq, batch_id) for seq, batch_id, _ in rows] == [(1, batch.batch_id), (2, batch.batch_id)]
    assert "$.results[0].kind" in rows[0][2]
    assert [r.seq for b in await drain(spool) for r in b.results] == [3, 4, 5]


async def test_rejected_table_is_bounded(
    make_spool: Callable[..., Spool], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = make_spool(max_rejected_bytes=payload_size(seq=10) * 3)
    for _ in range(10):
        await spool.add(result())
    with caplog.at_level(logging.WARNING, logger="qiancheng.spool"):
        while (batch := await spool.next_batch(2)) is not None:
            await spool.quarantine(batch.batch_id, "http 422")
    counters = await spool.counters()
    assert counters.rejected_total == 10 and counters.backlog == 0
    with sqlite3.connect(tmp_path / "spool.db") as db:
        kept = [row[0] for row in db.execute("SELECT seq FROM rejected ORDER BY seq")]
    assert kept == [8, 9, 10]  # the newest rejected are kept, the oldest pruned with a log line
    assert any("spool_rejected_pruned" in r.getMessage() for r in caplog.records)


async def test_undecodable_payload_is_set_aside_not_blocking(make_spool: Callable[..., Spool], tmp_path: Path) -> None:
    spool = make_spool()
    for i in range(3):
        await spool.add(result(i))
    spool.close()
    with sqlite3.connect(tmp_path / "spool.db") as db:
        db.execute("UPDATE results SET payload = ? WHERE seq = 2", (b'{"kind": 1}',))
    reopened = make_spool()
    batch = await reopened.next_batch(10)
    assert batch is not None and [r.seq for r in batch.results] == [1, 3]
    counters = await reopened.counters()
    assert (counters.rejected_total, counters.backlog) == (1, 2)


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from qiancheng.core.result import Result, Target
    from qiancheng.probes.spool import Spool

    async def main() -> None:
        spool = Spool(sys.argv[1], max_bytes=1 << 30)
        target = Target(name="t", address="127.0.0.1")
        while True:
            seq = await spool.add(Result(kind="tcp", target=target, start_ns=1, duration_seconds=0.0, success=True))
            print(seq, flush=True)

    asyncio.run(main())
    """
)


async def test_every_returned_seq_survives_kill_9(make_spool: Callable[..., Spool], tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    printed: list[int] = []
    for _round in range(2):  # the second child continues the numbering of the first
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, cwd=ROOT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert child.stdout is not None
        deadline = time.monotonic() + 20
        round_seqs: list[int] = []
        while len(round_seqs) < 150 and time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line, "the child exited early"
            round_seqs.append(int(line))
        child.send_signal(signal.SIGKILL)  # mid-loop, very likely mid-transaction
        rest, _ = child.communicate(timeout=10)
        round_seqs += [int(line) for line in rest.split()]
        assert len(round_seqs) >= 150
        if printed:
            assert round_seqs[0] > printed[-1]
        printed += round_seqs

    assert printed == sorted(set(printed))
    spool = make_spool()
    stored = [r.seq for b in [await spool.next_batch(MAX_RESULTS_PER_BATCH)] if b for r in b.results]
    assert set(printed) <= set(stored)
    assert stored == list(range(1, len(stored) + 1))  # no gap, no repeat
    counters = await spool.counters()
    assert counters.measured_total == counters.backlog == len(stored) >= len(printed)
    assert await spool.add(result()) == max(stored) + 1
