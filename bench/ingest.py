#!/usr/bin/env python3
"""Ingest benchmark: results durably stored per CPU-second of the collector, against a target of 50 000.

Starts a real `qiancheng-collector` on a free loopback port with a temporary SQLite store (WAL,
synchronous=FULL) and SLA judgement on (configs/sla.yaml: the judgement reads the store's series
index, which every commit keeps up to date), then, for batches of 100, 500 and 1000 realistic ICMP
results (10 samples, the figures and info the icmp kind reports; gzip JSON as the probe sends), pushes
from N concurrent clients for a fixed time. A result counts only once the collector answered 200 (it
answers only after the transaction holding the batch is fsynced).

"Per core" is per CPU-second of the collector process (utime + stime from /proc), the median of 1 s
rounds: the pushing clients share this machine's cores, so results per wall-clock second say as much
about them as about the collector, and a neighbour's burst moves one round, not the figure. The wall-clock rate and the p99 time from sending a request to reading its answer are
printed beside it. At the end the rows in SQLite and the collector's /metrics counts must both equal
what was acknowledged.

The peer measured in the same run is the store alone: the same batches written in-process through
`SqliteStore.store_batch` one after another (no HTTP, no JSON, no grouping), in results per wall-clock
second and per CPU-second of this process.

The bodies of a phase (gzip, as a probe sends them) are made before its clock starts, so that the
clients' own CPU, on the cores the collector runs on, is mostly sending and reading.

Each batch carries fresh seqs and fresh start times, as a probe's do: start times only ever move on,
so each commit appends to the series index rather than writing among older entries.

    .venv/bin/python bench/ingest.py [--seconds 8] [--clients 8] [--sizes 100,500,1000]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import math
import os
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from procfs import cpu_seconds, free_port, wait_listening

from qiancheng.collector.store.sqlite import SqliteStore
from qiancheng.core.result import Result, Target
from qiancheng.core.stats import train_stats
from qiancheng.core.wire import Batch, decode_batch, encode_batch
from qiancheng.probes.measure.mos import voice_figures

PROBE, TOKEN = "bench-probe-01", "bench-token-7f3a9c1e5b2d4f6a8c0e2b4d6f8a0c2e"
SIZES = (100, 500, 1000)
TARGETS = 20  # a city probe measures a few dozen targets; each batch touches all their series
#: results durably stored per CPU-second of the collector, at every batch size (issue 21, small boxes)
TARGET_PER_CPU_SECOND = 50_000
#: bodies made before each phase: for this many results per second of it
PREPARED_RESULTS_PER_SECOND = 100_000
#: results per CPU-second are taken in rounds this long (the CPU clock ticks every 10 ms)
ROUND_SECONDS = 1.0
SLA_PROFILES = Path(__file__).resolve().parent.parent / "configs" / "sla.yaml"
# placeholders in the template batch, replaced by each batch's own seqs and start times
_SEQ_MARK = 987_654_321_012
_START_MARK = 1_999_999_999_999_999_999
_START_STEP_NS = 1000  # between consecutive results of one batch


def realistic_results(count: int, start_ns: int | None = None) -> list[Result]:
    """ICMP trains of 10 echoes to TARGETS targets, one lost packet in ten, RTTs around 2-40 ms, with the
    figures (train statistics and voice estimate) and info the icmp kind reports."""
    results = []
    first = time.time_ns() if start_ns is None else start_ns
    for i in range(count):
        base = 0.002 + 0.002 * (i % TARGETS)
        samples: list[float | None] = [base + 0.0001 * ((i + k) % 7) for k in range(10)]
        if i % 10 == 0:
            samples[i % 10] = None
        stats = train_stats(samples)
        figures = stats.figures()
        assert stats.rtt_median is not None
        figures.update(voice_figures(stats.rtt_median / 2, stats.jitter or 0.0, stats.loss_ratio))
        address = f"198.18.0.{i % TARGETS + 1}"
        info = {"address": address, "socket": "raw", "size_bytes": "56", "send_timestamps": "kernel"}
        target = Target(name=f"target-{i % TARGETS:02d}", address=address, target_class="edge")
        results.append(Result(kind="icmp", target=target, start_ns=first + i * _START_STEP_NS, duration_seconds=1.0,
                              success=True, figures=figures, info=info, samples=samples, seq=_SEQ_MARK))  # fmt: skip
    return results


class BatchFactory:
    """Batches with fresh batch ids, seqs and start times, built from pre-encoded JSON so the client stays cheap."""

    def __init__(self, size: int) -> None:
        template = Batch(probe_id=PROBE, batch_id="BATCHIDXXXXXXXX", results=realistic_results(size, _START_MARK),
                         city="lishui", isp="chinatelecom", stats={"spool_backlog": 0.0})  # fmt: skip
        # piece i ends where result i's seq goes; result i's start time is the one placeholder in piece i
        pieces = encode_batch(template).split(str(_SEQ_MARK).encode())
        self.pieces = [piece.split(str(_START_MARK + i * _START_STEP_NS).encode()) for i, piece in enumerate(pieces[:-1])]
        self.tail = pieces[-1]
        self.size = size

    def make(self, batch_number: int, first_seq: int, first_start_ns: int) -> bytes:
        parts: list[bytes] = []
        for i, (before_start, after_start) in enumerate(self.pieces):
            parts += (before_start, str(first_start_ns + i * _START_STEP_NS).encode(), after_start,
                      str(first_seq + i).encode())  # fmt: skip
        parts.append(self.tail)
        return b"".join(parts).replace(b"BATCHIDXXXXXXXX", f"bench-{batch_number:010d}".encode(), 1)


@dataclass
class Counter:
    batch: int = 0
    seq: int = 1

    def take(self, size: int) -> tuple[int, int]:
        self.batch += 1
        first, self.seq = self.seq, self.seq + size
        return self.batch, first


@dataclass
class Phase:
    size: int
    results: int = 0
    batches: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, one per acknowledged request
    rounds: list[float] = field(default_factory=list)  # results per collector CPU-second, one per round
    store_per_second: float = 0.0
    store_per_cpu_second: float = 0.0

    @property
    def per_second(self) -> float:
        return self.results / self.seconds

    @property
    def per_cpu_second(self) -> float:
        """The median round: a neighbour's burst on a shared machine moves a round, not the figure."""
        return statistics.median(self.rounds) if self.rounds else float("nan")

    def latency_ms(self, quantile: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] if ordered else float("nan")


def gzip_bodies(factory: BatchFactory, counter: Counter, count: int) -> list[bytes]:
    """`count` gzip bodies, each with the next batch number and seqs, start times just past (as a probe
    pushing as it measures); level 1: the collector's inflate cost hardly depends on the level, ours does."""
    bodies = []
    for _ in range(count):
        number, first = counter.take(factory.size)
        bodies.append(gzip.compress(factory.make(number, first, time.time_ns() - factory.size * _START_STEP_NS), 1))
    return bodies


async def push_phase(url: str, pid: int, phase: Phase, clients: int, seconds: float, counter: Counter) -> None:
    factory = BatchFactory(phase.size)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", "Content-Encoding": "gzip"}
    # made before the clock starts, so that the clients' own CPU, on the cores the collector runs on, is
    # mostly sending and reading; enough for PREPARED_RESULTS_PER_SECOND, then made as they are sent
    ready = gzip_bodies(factory, counter, math.ceil(PREPARED_RESULTS_PER_SECOND * seconds / phase.size))
    ready.reverse()

    async def client(session: aiohttp.ClientSession, deadline: float) -> None:
        while time.monotonic() < deadline:
            body = ready.pop() if ready else gzip_bodies(factory, counter, 1)[0]
            sent = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.json()
                if response.status != 200 or answer["stored"] != phase.size:
                    raise RuntimeError(f"collector answered {response.status}: {answer}")
            phase.latencies.append(time.perf_counter() - sent)
            phase.results += phase.size
            phase.batches += 1

    async def rounds(started: float) -> None:
        """Results acknowledged per CPU-second of the collector, in rounds of about ROUND_SECONDS."""
        count = max(1, round(seconds / ROUND_SECONDS))
        cpu, results = cpu_seconds(pid), phase.results
        for end in range(1, count + 1):
            await asyncio.sleep(max(0.0, started + end * seconds / count - time.monotonic()))
            cpu_now, results_now = cpu_seconds(pid), phase.results
            if cpu_now > cpu:
                phase.rounds.append((results_now - results) / (cpu_now - cpu))
            cpu, results = cpu_now, results_now

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        await asyncio.gather(rounds(started), *(client(session, started + seconds) for _ in range(clients)))
        phase.seconds, phase.cpu_seconds = time.monotonic() - started, cpu_seconds(pid) - cpu_before


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def store_ceiling(path: str, size: int, seconds: float) -> tuple[float, float]:
    """Results per wall-clock second and per CPU-second through SqliteStore.store_batch alone, one
    batch at a time, in this process (its client is idle meanwhile)."""
    store = await SqliteStore.open(path)
    try:
        factory = BatchFactory(size)
        stored, number, elapsed, cpu = 0, 0, 0.0, 0.0
        while elapsed < seconds:
            number += 1
            # made and decoded outside the clocks: the ceiling is the store's, not the wire format's
            batch = decode_batch(factory.make(number, number * size + 1, time.time_ns() - size * _START_STEP_NS))
            cpu_before, started = _own_cpu_seconds(), time.monotonic()
            stored += (await store.store_batch(batch, time.time_ns())).stored
            elapsed, cpu = elapsed + time.monotonic() - started, cpu + _own_cpu_seconds() - cpu_before
        return stored / elapsed, stored / cpu
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
        # judged as shipped: a pass at start and then every minute, over the store's series index
        f"sla: {{profiles: \"{SLA_PROFILES}\"}}\n"
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


def metrics_counts(port: int) -> tuple[float, int]:
    """(results counted `stored` on /metrics, SLA objectives on /metrics) of the collector."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    stored = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith('qiancheng_ingest_results_total{outcome="stored"}'))  # fmt: skip
    objectives = sum(1 for line in text.splitlines() if line.startswith("qiancheng_sla_threshold{"))
    return stored, objectives


def verdict(met: bool) -> str:
    return "PASS" if met else "MISS"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=8.0, help="push time per batch size (default 8)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="batch sizes, comma-separated (default %(default)s; the target is judged on these)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    with tempfile.TemporaryDirectory(prefix="qiancheng-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        collector = start_collector(workdir, port)
        url = f"http://127.0.0.1:{port}/api/v1/results"
        counter = Counter()
        phases = [Phase(size) for size in sizes]
        try:
            print(f"collector pid {collector.pid} on 127.0.0.1:{port}, SQLite in {workdir} (WAL, synchronous=FULL), "
                  f"SLA judgement on, {args.clients} clients, {args.seconds:g} s per size, {os.cpu_count()} CPUs")  # fmt: skip
            print(f"{'batch':>6} {'results/CPU-s':>14} {'rounds min-max':>16} {'results/s':>10} {'CPU s/10k':>10}"
                  f" {'p50 ms':>7} {'p99 ms':>7} {'store/CPU-s':>12} {'store/s':>8}")  # fmt: skip
            for phase in phases:
                asyncio.run(push_phase(url, collector.pid, phase, args.clients, args.seconds, counter))
                ceiling = asyncio.run(store_ceiling(str(workdir / f"ceiling-{phase.size}.db"), phase.size, args.seconds / 2))
                phase.store_per_second, phase.store_per_cpu_second = ceiling
                spread = f"{min(phase.rounds):,.0f}-{max(phase.rounds):,.0f}"
                print(f"{phase.size:>6} {phase.per_cpu_second:>14,.0f} {spread:>16} {phase.per_second:>10,.0f} "
                      f"{10_000 / phase.per_cpu_second:>10.3f} {phase.latency_ms(0.5):>7.1f} {phase.latency_ms(0.99):>7.1f}"
                      f" {phase.store_per_cpu_second:>12,.0f} {phase.store_per_second:>8,.0f}")  # fmt: skip
            counted, objectives = metrics_counts(port)
        finally:
            collector.send_signal(signal.SIGTERM)
            stopped = collector.wait(timeout=30)
        with sqlite3.connect(f"file:{workdir / 'collector.db'}?mode=ro", uri=True) as db:
            rows = int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])
            batches = int(db.execute("SELECT COUNT(*) FROM batches").fetchone()[0])
        acknowledged = sum(p.results for p in phases)
        acknowledged_batches = sum(p.batches for p in phases)
        print(f"SLA judgement: {objectives} objectives on /metrics; collector exit {stopped}")
        print("wall clock: " + ", ".join(f"{p.size}/batch {p.per_second:,.0f} results/s ({p.per_second / p.store_per_second:.2f}"
                                         " of the store alone)" for p in phases))  # fmt: skip
        print("acknowledgement p99 (per request, at the client): "
              + ", ".join(f"{p.size}/batch {p.latency_ms(0.99):.1f} ms" for p in phases))
        exact = rows == acknowledged and batches == acknowledged_batches and counted == acknowledged
        print(f"target: every acknowledged result stored once and counted on /metrics: {acknowledged:,} acknowledged "
              f"in {acknowledged_batches:,} batches, {rows:,} rows in {batches:,} batches, {counted:,.0f} on /metrics"
              f" ... {verdict(exact)}")  # fmt: skip
        met = all(p.per_cpu_second >= TARGET_PER_CPU_SECOND for p in phases)
        print(f"target: {TARGET_PER_CPU_SECOND:,} results/s per collector core (results per CPU-second of the collector, "
              "median of 1 s rounds) at every batch size: "
              + ", ".join(f"{p.size}/batch {p.per_cpu_second:,.0f} ({p.per_cpu_second / TARGET_PER_CPU_SECOND:.2f})"
                          for p in phases)
              + f" ... {verdict(met)}")  # fmt: skip
        return 0 if exact and stopped == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
