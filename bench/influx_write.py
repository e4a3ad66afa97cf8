#!/usr/bin/env python3
"""InfluxDB-API write benchmark: results per second a collector durably stores with `backend: influx`,
against the same collector with `backend: sqlite`, measured in the same run.

Starts victoria-metrics (it accepts InfluxDB line protocol on /api/v2/write) and two collectors on
loopback, then pushes the same realistic ICMP batches (gzip JSON, as the probe sends, each result with
its own start time) from N concurrent clients to each for a fixed time. A result counts only once the
collector answered 200. The peers in the same run: the SQLite collector (`influx/sqlite`), and each
store alone in this process (`store_batch` with no HTTP and no JSON). At the end the points in
victoria-metrics and the rows in SQLite are counted and must equal what was acknowledged.

    .venv/bin/python bench/influx_write.py [--seconds 5] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
from ingest import (  # bench/ingest.py, beside this file
    PROBE,
    TOKEN,
    cpu_seconds,
    free_port,
    realistic_results,
    start_listening,
)

from qiancheng.collector.config import InfluxConfig
from qiancheng.collector.store.influx import InfluxStore
from qiancheng.collector.store.sqlite import SqliteStore
from qiancheng.core.result import Result
from qiancheng.core.units import Duration
from qiancheng.core.wire import Batch, encode_batch

SIZES = (100, 1000)
_START_MARK, _SEQ_MARK = 1_111_111_111_111_111_111, 987_654_321_012
_MARKS = re.compile(rb"(%d|%d)" % (_START_MARK, _SEQ_MARK))


class Batches:
    """Batches with fresh ids, seqs and start times (each result a point of its own), from pre-encoded JSON."""

    def __init__(self, size: int, base_ns: int, probe: str = PROBE) -> None:
        results = [Result(**{f: getattr(r, f) for f in r.__struct_fields__ if f not in ("seq", "start_ns")},
                          start_ns=_START_MARK, seq=_SEQ_MARK) for r in realistic_results(size)]  # fmt: skip
        template = Batch(probe_id=probe, batch_id="BATCHIDXXXXXXXX", results=results, city="lishui", isp="chinatelecom",
                         stats={"spool_backlog": 0.0})  # fmt: skip
        self.pieces = _MARKS.split(encode_batch(template))  # text, mark, text, mark, ...: start, seq per result
        self.size = size
        self.base_ns = base_ns
        self.number = 0
        # streams of different batch sizes follow each other on one probe: seqs and ids must not repeat
        self.first = self.seq = size * 10**7

    def next(self) -> bytes:
        self.number += 1
        first_seq, self.seq = self.seq, self.seq + self.size
        # results 1 ms apart, going back in time from base_ns: every result has its own timestamp
        first_start = self.base_ns - (first_seq - self.first) * 1_000_000
        parts = [self.pieces[0].replace(b"BATCHIDXXXXXXXX", f"bench-{self.size}-{self.number:010d}".encode())]
        for i in range(1, len(self.pieces), 2):
            index = (i - 1) // 4
            mark = self.pieces[i]
            parts.append(str(first_start - index * 1_000_000 if mark == str(_START_MARK).encode() else first_seq + index).encode())
            parts.append(self.pieces[i + 1])
        return b"".join(parts)


async def push(url: str, pid: int, batches: Batches, clients: int, seconds: float) -> tuple[float, float]:
    """(results/s acknowledged, CPU seconds of the collector per 10k results)."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", "Content-Encoding": "gzip"}
    acknowledged = 0

    async def client(session: aiohttp.ClientSession, deadline: float) -> None:
        nonlocal acknowledged
        while time.monotonic() < deadline:
            body = gzip.compress(batches.next(), compresslevel=1)
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.json()
                if response.status != 200 or answer["stored"] != batches.size:
                    raise RuntimeError(f"collector answered {response.status}: {answer}")
            acknowledged += batches.size

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        await asyncio.gather(*(client(session, started + seconds) for _ in range(clients)))
        elapsed, cpu = time.monotonic() - started, cpu_seconds(pid) - cpu_before
    return acknowledged / elapsed, cpu / acknowledged * 10_000


async def store_alone(store: InfluxStore | SqliteStore, batches: Batches, seconds: float) -> float:
    """Results per second through `store_batch` alone, one batch at a time, in this process."""
    from qiancheng.core.wire import decode_batch

    stored, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        outcome = await store.store_batch(decode_batch(batches.next()), time.time_ns())
        stored += outcome.stored
    elapsed = time.monotonic() - started
    await store.close()
    return stored / elapsed


def collector(workdir: Path, name: str, store: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = workdir / f"{name}.yaml"
    config.write_text(f"listen: {{host: 127.0.0.1, port: {port}}}\nstore: {store}\n"
                      f"probes:\n  - {{id: {PROBE}, token_sha256: {hashlib.sha256(TOKEN.encode()).hexdigest()}}}\n"
                      "log_level: warning\n"
                      # the ceiling of ingest is measured, not the per-probe limits that protect it
                      "limits: {requests_per_second: 1000000, request_burst: 1000000, results_per_second: 1000000000,"
                      " result_burst: 1000000000}\n")  # fmt: skip
    process = start_listening([sys.executable, "-m", "qiancheng.collector.main", "--config", str(config)], workdir / f"{name}.log", port)
    return process, f"http://127.0.0.1:{port}/api/v1/results"


def count_samples(vm_url: str, selector: str) -> int:
    """Samples matching `selector` in victoria-metrics (call after a flush)."""
    query = urllib.parse.urlencode({"query": f"sum(count_over_time({selector}[30d]))", "time": str(time.time() + 60)})
    answer = json.loads(urllib.request.urlopen(f"{vm_url}/api/v1/query?{query}", timeout=60).read())
    result = answer["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="push time per batch size and store (default 5)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    args = parser.parse_args()
    binary = shutil.which("victoria-metrics")
    if binary is None:
        raise SystemExit("victoria-metrics is not installed (Debian: apt-get install victoria-metrics)")

    with tempfile.TemporaryDirectory(prefix="qiancheng-bench-") as tmp:
        workdir = Path(tmp)
        vm_port = free_port()
        vm_url = f"http://127.0.0.1:{vm_port}"
        vm = start_listening([binary, f"-storageDataPath={workdir / 'vm'}", f"-httpListenAddr=127.0.0.1:{vm_port}",
                    "-loggerLevel=ERROR", "-retentionPeriod=100y"], workdir / "vm.log", vm_port)  # fmt: skip
        influx_store = f'{{backend: influx, path: "{workdir / "i.db"}", influx: {{url: "{vm_url}", org: bench, bucket: bench}}}}'
        sqlite_collector, sqlite_url = collector(workdir, "sqlite", f'{{backend: sqlite, path: "{workdir / "c.db"}"}}')
        influx_collector, influx_url = collector(workdir, "influx", influx_store)
        base_ns = time.time_ns()
        acknowledged = {"sqlite": 0.0, "influx": 0.0}
        try:
            print(f"victoria-metrics {vm_url}; collectors: sqlite (WAL, synchronous=FULL) and influx; "
                  f"{args.clients} clients, {args.seconds:g} s per phase")  # fmt: skip
            print(f"{'batch':>6} {'sqlite/s':>9} {'influx/s':>9} {'influx/sqlite':>13} {'CPU s/10k sq|in':>16} "
                  f"{'store alone sq/s':>16} {'in/s':>8} {'in/sq':>6}")  # fmt: skip
            for size in SIZES:
                # each collector and store gets its own stream of batches: probes, seqs and times never overlap
                sqlite_batches, influx_batches = Batches(size, base_ns - 10**15), Batches(size, base_ns)
                sq_rate, sq_cpu = asyncio.run(push(sqlite_url, sqlite_collector.pid, sqlite_batches, args.clients, args.seconds))
                in_rate, in_cpu = asyncio.run(push(influx_url, influx_collector.pid, influx_batches, args.clients, args.seconds))
                acknowledged["sqlite"] += sqlite_batches.seq - sqlite_batches.first
                acknowledged["influx"] += influx_batches.seq - influx_batches.first

                async def alone_sqlite(size: int = size) -> float:
                    return await store_alone(await SqliteStore.open(str(workdir / f"alone-{size}.db")),
                                             Batches(size, base_ns - 2 * 10**15), args.seconds / 2)  # fmt: skip

                async def alone_influx(size: int = size) -> float:
                    config = InfluxConfig(url=vm_url, bucket="alone", timeout=Duration(10.0))
                    return await store_alone(await InfluxStore.open(config), Batches(size, base_ns - 3 * 10**15, "bench-alone"),
                                             args.seconds / 2)  # fmt: skip

                sq_alone, in_alone = asyncio.run(alone_sqlite()), asyncio.run(alone_influx())
                print(f"{size:>6} {sq_rate:>9.0f} {in_rate:>9.0f} {in_rate / sq_rate:>13.2f} {sq_cpu:>7.2f} | {in_cpu:<6.2f} "
                      f"{sq_alone:>16.0f} {in_alone:>8.0f} {in_alone / sq_alone:>6.2f}")  # fmt: skip
        finally:
            for process in (sqlite_collector, influx_collector):
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        with sqlite3.connect(f"file:{workdir / 'c.db'}?mode=ro", uri=True) as db:
            rows = int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        urllib.request.urlopen(vm_url + "/internal/force_flush", timeout=30).read()
        time.sleep(3)  # new series reach the search index within a second or two
        points = count_samples(vm_url, f'qiancheng_result_seq{{probe="{PROBE}"}}')  # one per stored result
        values = count_samples(vm_url, '{__name__=~"qiancheng_.*"}')  # every field of every point
        vm.send_signal(signal.SIGTERM)
        vm.wait(timeout=30)
        size = disk_bytes(workdir / "vm")
        print(f"victoria-metrics on disk: {size / 1e6:.1f} MB for {values} field values, {size / values:.2f} bytes each "
              "(just written, before background merges compress further)")  # fmt: skip
        expected = acknowledged["influx"]
        ok = rows == acknowledged["sqlite"] and points == expected
        print(f"verified: sqlite {acknowledged['sqlite']:.0f} acknowledged, {rows} rows; influx {expected:.0f} acknowledged, "
              f"{points} points in victoria-metrics: {'ok' if ok else 'MISMATCH'}")  # fmt: skip
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
