#!/usr/bin/env python3
"""SLA judgement benchmark: how long one pass takes for many series, and what the series index buys.

Fills a temporary SQLite store (through `SqliteStore.store_batch`, as ingest does) with PROBES x
TARGETS ICMP series: one test every 30 s for the judged hour (10 samples each) and HISTORY_HOURS of
older results before it, as a store holds after a while. Then it times one judgement pass with the
shipped configs/sla.yaml (edge targets: edge_local and cloud_vr_gaming) and windows 5m and 1h:

- `read`: the collector's reads, one range scan of the results_series index per series;
- `judge`: the indicators and breach states computed from what was read;
- peer, measured in the same run: the same reads with the index forbidden (`results NOT INDEXED`),
  i.e. what a query that cannot use it costs, for the first PEER_SERIES series (each is a scan of the
  whole table); `indexed/unindexed` compares the time per series.

    .venv/bin/python bench/sla_judgement.py [--probes 50] [--targets 20] [--history-hours 6]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from qiancheng.collector.sla.judge import Judge
from qiancheng.collector.sla.profiles import load_sla_profiles
from qiancheng.collector.store import SeriesKey, WindowRow
from qiancheng.collector.store.sqlite import SERIES_SQL, WINDOW_SQL, SqliteStore
from qiancheng.core.result import Result, Target
from qiancheng.core.stats import train_stats
from qiancheng.core.wire import Batch

ROOT = Path(__file__).resolve().parents[1]
S = 1_000_000_000
INTERVAL = 30
BATCH = 2000


def results(target: str, starts: list[int], rng: random.Random, first_seq: int) -> list[Result]:
    out = []
    for offset, start in enumerate(starts):
        samples: list[float | None] = [0.002 + rng.random() * 0.004 if rng.random() > 0.01 else None for _ in range(10)]
        out.append(Result(kind="icmp", target=Target(name=target, address="198.18.0.1", target_class="edge"),
                          start_ns=start, duration_seconds=0.5, success=True, figures=train_stats(samples).figures(),
                          samples=samples, seq=first_seq + offset))  # fmt: skip
    return out


async def fill(path: Path, probes: int, targets: int, history_hours: float, now_ns: int) -> int:
    store = await SqliteStore.open(str(path))
    rng = random.Random(7)
    starts = list(range(now_ns - int((1 + history_hours) * 3600 * S), now_ns, INTERVAL * S))
    stored = 0
    try:
        for p in range(probes):
            pending: list[Result] = []
            seq = 1
            for t in range(targets):
                pending += results(f"edge-{t:03d}", starts, rng, seq)
                seq += len(starts)
            for index in range(0, len(pending), BATCH):
                chunk = pending[index : index + BATCH]
                batch = Batch(probe_id=f"probe-{p:03d}", batch_id=f"bench-{p:03d}-{index:08d}", results=chunk,
                              city=f"city-{p % 10}", isp="ct")  # fmt: skip
                stored += (await store.store_batch(batch, now_ns)).stored
    finally:
        await store.close()
    return stored


def read_unindexed(path: Path, since_ns: int, until_ns: int, series: int) -> int:
    """The same reads as SqliteStore.windows for the first `series` series, with the index forbidden; rows read."""
    sql = WINDOW_SQL.replace("FROM results", "FROM results NOT INDEXED")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = 0
        for labels in db.execute(SERIES_SQL, (since_ns,)).fetchall()[:series]:
            key = SeriesKey(*labels)
            rows += len(db.execute(sql, (key.probe, key.target, key.kind, since_ns, until_ns)).fetchall())
        return rows
    finally:
        db.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probes", type=int, default=50)
    parser.add_argument("--targets", type=int, default=20)
    parser.add_argument("--history-hours", type=float, default=6.0)
    parser.add_argument("--peer-series", type=int, default=20)
    args = parser.parse_args()
    now_ns = time.time_ns()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "collector.db"
        started = time.perf_counter()
        stored = await fill(path, args.probes, args.targets, args.history_hours, now_ns)
        print(f"store: {stored} results in {args.probes * args.targets} series "
              f"({args.history_hours:g} h history + the judged hour), filled in {time.perf_counter() - started:.0f} s")  # fmt: skip
        judge = Judge(load_sla_profiles(ROOT / "configs" / "sla.yaml"), [300.0, 3600.0], 3, 3)
        reader = await SqliteStore.open(str(path))
        try:
            since = now_ns - 3600 * S
            started = time.perf_counter()
            data = await reader.windows(since, now_ns)
            read_seconds = time.perf_counter() - started
            started = time.perf_counter()
            judgements = judge.judge(data, now_ns)
            judge_seconds = time.perf_counter() - started
        finally:
            await reader.close()
        rows = sum(len(r) for _, r in data)
        started = time.perf_counter()
        peer_count = min(args.peer_series, len(data))
        peer_rows = read_unindexed(path, since, now_ns, peer_count)
        peer_seconds = time.perf_counter() - started
        assert peer_rows == sum(len(r) for _, r in data[:peer_count]), peer_rows
        samples = sum(len(row.samples) for _, r in data for row in r if isinstance(row, WindowRow))
        print(f"one pass: {len(data)} series, {rows} results ({samples} samples) in the 1 h window, "
              f"{len(judgements)} objectives judged")  # fmt: skip
        print(f"  read (indexed)   {read_seconds * 1000:8.1f} ms")
        print(f"  judge            {judge_seconds * 1000:8.1f} ms")
        print(f"  pass             {(read_seconds + judge_seconds) * 1000:8.1f} ms  "
              f"({(read_seconds + judge_seconds) / len(data) * 1e6:.0f} us per series)")  # fmt: skip
        ours, peer = read_seconds / len(data), peer_seconds / peer_count
        print(f"  read per series: indexed {ours * 1e6:.0f} us, with the index forbidden {peer * 1e6:.0f} us "
              f"(peer, {peer_count} series)")  # fmt: skip
        print(f"  indexed/unindexed read: {ours / peer:.4f}")


if __name__ == "__main__":
    asyncio.run(main())
