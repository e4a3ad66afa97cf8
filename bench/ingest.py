#!/usr/bin/env python3
"""Ingest benchmark: how many results per second the collector stores durably, and its CPU per 10k results.

Starts a real `qiancheng-collector` on a free loopback port with a temporary SQLite store, then, for
batches of 100, 500 and 1000 realistic ICMP results (10 samples each, gzip JSON as the probe sends),
pushes from N concurrent clients for a fixed time. A result counts only once the collector answered
200 (it answers only after the batch's transaction is fsynced); at the end the rows in SQLite are
counted and must equal what was acknowledged.

The peer measured in the same run is the store alone: the same batches written in-process through
`SqliteStore.store_batch` (one fsynced transaction per batch, no HTTP, no JSON). `ingest/store` is
the share of the storage ceiling the HTTP path keeps.

    .venv/bin/python bench/ingest.py [--seconds 10] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from qiancheng.collector.store.sqlite import SqliteStore
from qiancheng.core.result import Result, Target
from qiancheng.core.stats import train_stats
from qiancheng.core.wire import Batch, encode_batch

from procfs import cpu_seconds, free_port, wait_listening

PROBE, TOKEN = "bench-probe-01", "bench-token-7f3a9c1e5b2d4f6a8c0e2b4d6f8a0c2e"
SIZES = (100, 500, 1000)
TARGETS = 20  # a city probe measures a few dozen targets; each batch touches all their series
_SEQ_MARK = 987_654_321_012


def realistic_results(count: int) -> list[Result]:
    """ICMP trains of 10 echoes to TARGETS targets, one lost packet in ten, RTTs around 2-40 ms."""
    results = []
    now = time.time_ns()
    for i in range(count):
        base = 0.002 + 0.002 * (i % TARGETS)
        samples: list[float | None] = [base + 0.0001 * ((i + k) % 7) for k in range(10)]
        if i % 10 == 0:
            samples[i % 10] = None
        target = Target(name=f"target-{i % TARGETS:02d}", address=f"198.18.0.{i % TARGETS + 1}", target_class="edge")
        results.append(Result(kind="icmp", target=target, start_ns=now + i * 1000, duration_seconds=1.0,
                              success=True, figures=train_stats(samples).figures(), samples=samples,
                              seq=_SEQ_MARK))  # fmt: skip
    return results


class BatchFactory:
    """Batches with fresh batch ids and seqs, built from pre-encoded JSON so the client stays cheap."""

    def __init__(self, size: int) -> None:
        template = Batch(probe_id=PROBE, batch_id="BATCHIDXXXXXXXX", results=realistic_results(size),
                         city="lishui", isp="chinatelecom", stats={"spool_backlog": 0.0})  # fmt: skip
        self.pieces = encode_batch(template).split(str(_SEQ_MARK).encode())
        self.size = size

    def make(self, batch_number: int, first_seq: int) -> bytes:
        parts = [self.pieces[0].replace(b"BATCHIDXXXXXXXX", f"bench-{batch_number:010d}".encode())]
        for i, piece in enumerate(self.pieces[1:]):
            parts.append(str(first_seq + i).encode())
            parts.append(piece)
        return b"".join(parts)


@dataclass
class Counter:
    batch: int = 0
    seq: int = 1

    def take(self, size: int) -> tuple[int, int]:
        self.batch += 1
        first, self.seq = self.seq, self.seq + size
        return self.batch, first


@dataclass(frozen=True)
class Phase:
    size: int
    results: int
    seconds: float
    cpu_seconds: float
    store_results_per_second: float

    @property
    def per_second(self) -> float:
        return self.results / self.seconds

    @property
    def cpu_per_10k(self) -> float:
        return self.cpu_seconds / self.results * 10_000 if self.results else float("nan")


async def push_phase(url: str, pid: int, size: int, clients: int, seconds: float, counter: Counter) -> tuple[int, float, float]:
    factory = BatchFactory(size)
    acknowledged = 0
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", "Content-Encoding": "gzip"}

    async def client(session: aiohttp.ClientSession, deadline: float) -> None:
        nonlocal acknowledged
        while time.monotonic() < deadline:
            number, first = counter.take(size)
            # level 1: the collector's inflate cost hardly depends on the level; the client's does
            body = gzip.compress(factory.make(number, first), compresslevel=1)
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.json()
                if response.status != 200 or answer["stored"] != size:
                    raise RuntimeError(f"collector answered {response.status}: {answer}")
            acknowledged += size

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        await asyncio.gather(*(client(session, started + seconds) for _ in range(clients)))
        elapsed, cpu_after = time.monotonic() - started, cpu_seconds(pid)
    return acknowledged, elapsed, cpu_after - cpu_before


async def store_ceiling(path: str, size: int, seconds: float) -> float:
    """Results per second through SqliteStore.store_batch alone, same batches, in this process."""
    store = await SqliteStore.open(path)
    try:
        results = realistic_results(size)
        stored, number, started = 0, 0, time.monotonic()
        while time.monotonic() - started < seconds:
            number += 1
            numbered = [Result(**{f: getattr(r, f) for f in r.__struct_fields__ if f != "seq"}, seq=number * size + i)
                        for i, r in enumerate(results)]  # fmt: skip
            outcome = await store.store_batch(Batch(probe_id=PROBE, batch_id=f"ceiling-{number:010d}", results=numbered,
                                                    city="lishui", isp="chinatelecom"), time.time_ns())  # fmt: skip
            stored += outcome.stored
        return stored / (time.monotonic() - started)
    finally:
        await store.close()


def start_collector(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    config = workdir / "collector.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"store: {{backend: sqlite, path: \"{workdir / 'collector.db'}\"}}\n"
        f"probes:\n  - {{id: {PROBE}, token_sha256: {hashlib.sha256(TOKEN.encode()).hexdigest()}}}\n"
        "log_level: warning\n"
        # the ceiling of ingest is measured, not the per-probe limits that protect it
        "limits: {requests_per_second: 1000000, request_burst: 1000000, results_per_second: 1000000000, result_burst: 1000000000}\n"
    )
    command = [sys.executable, "-m", "qiancheng.collector.main", "--config", str(config)]
    return start_listening(command, workdir / "collector.log", port)


def start_listening(command: list[str], log: Path, port: int) -> subprocess.Popen[bytes]:
    """Start a server with its output in `log`; return once it accepts TCP on 127.0.0.1:port."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    if (problem := wait_listening(process, port, 15)) is not None:
        process.kill()
        raise SystemExit(f"{command[0]} {problem}: {log.read_text()}")
    return process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="push time per batch size (default 5)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="qiancheng-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        collector = start_collector(workdir, port)
        url = f"http://127.0.0.1:{port}/api/v1/results"
        counter = Counter()
        phases: list[Phase] = []
        try:
            print(f"collector pid {collector.pid} on 127.0.0.1:{port}, SQLite in {workdir} (WAL, synchronous=FULL), "
                  f"{args.clients} clients, {args.seconds:g} s per size, {os.cpu_count()} CPUs")  # fmt: skip
            print(f"{'batch':>6} {'results/s':>10} {'store/s':>10} {'ingest/store':>12} {'CPU s/10k':>10} {'batches/s':>10}")
            for size in SIZES:
                results, seconds, cpu = asyncio.run(push_phase(url, collector.pid, size, args.clients, args.seconds, counter))
                ceiling = asyncio.run(store_ceiling(str(workdir / f"ceiling-{size}.db"), size, args.seconds / 2))
                phase = Phase(size, results, seconds, cpu, ceiling)
                phases.append(phase)
                print(f"{size:>6} {phase.per_second:>10.0f} {ceiling:>10.0f} {phase.per_second / ceiling:>12.2f} "
                      f"{phase.cpu_per_10k:>10.3f} {phase.per_second / size:>10.1f}")  # fmt: skip
        finally:
            collector.send_signal(signal.SIGTERM)
            stopped = collector.wait(timeout=30)
        with sqlite3.connect(f"file:{workdir / 'collector.db'}?mode=ro", uri=True) as db:
            rows = int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        acknowledged = sum(p.results for p in phases)
        verdict = "all acknowledged results in SQLite" if rows == acknowledged else f"MISMATCH: {rows} rows"
        print(f"verified: {acknowledged} acknowledged, {rows} rows: {verdict}; collector exit {stopped}")
        summary = ", ".join(f"{p.size}/batch {p.per_second:,.0f} results/s ({p.per_second / p.store_results_per_second:.2f} of store), "
                            f"{p.cpu_per_10k:.2f} CPU s/10k" for p in phases)  # fmt: skip
        print(f"summary: ingest durably stored {summary}; {args.clients} clients")
        return 0 if rows == acknowledged and stopped == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
