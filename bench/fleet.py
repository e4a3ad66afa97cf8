#!/usr/bin/env python3
"""Fleet benchmark: a simulated 1000-city fleet of probes against real collectors, one VictoriaMetrics and one
Prometheus, at 1x and 10x the plan's nominal result rate.

    .venv/bin/python bench/fleet.py [--cities 100,1000] [--collectors 4] [--seconds 20]

System under test, all on loopback, everything under one temporary directory, a fresh set per city count:
- N real `qiancheng-collector` processes (plain HTTP: the bench needs no TLS, and the enroll route asks for
  none unless `listen.tls.client_ca_file` turns on mutual TLS), each with `store.backend: influx` writing
  to ONE victoria-metrics through its InfluxDB write API, each with its own registry and the generated
  plan: configs/plan.yaml's defaults, templates and overrides with a cities table of c0001..cNNNN
  (edge and pool addresses in 198.18.0.0/15, five regional hubs);
- ONE Prometheus scraping every collector's /metrics (every 15 s, as configs/prometheus/prometheus.yml; scrape
  timeout the same) and remote-writing to the same victoria-metrics.

Cities are sharded over the collectors by a consistent hash of the city name. docs/operations.md only shows
nginx's `hash $qiancheng_city consistent`; the bench uses the same kind of ring (160 points per collector, as
nginx's ketama-style hash, on 32 bits of MD5 as libketama), not nginx's exact point positions.

Simulated probes (1 process, asyncio, one coroutine per probe): 3 per city (chinatelecom, chinaunicom,
chinamobile). Enrollment codes are made with `ProbeRegistry.add_code` (the call `qiancheng-collector
enroll` makes) in each shard's registry before its collector starts; every probe then POSTs
/api/v1/enroll from its own loopback source address (each box has its own address, and the collector
allows 10 enrollments per address), GETs /api/v1/plan, turns it into jobs with the probe's own
`plan_jobs`, and pushes what those jobs would have measured: every 5 s (the uploader's batch age) a gzip
JSON Batch of the results due in that window, each with the start time of its slot, `info.plan`, and
figures, info and samples shaped as the real kind fills them, drawn per target class (edge 2-5 ms, pool
3-8 ms, regional hub 10-20 ms, national hub 30-40 ms, ...). Non-200 answers are retried with the same
batch id, after Retry-After or a jittered backoff, as the uploader does. The interval of every job is
divided by the speed-up (1x, 10x); results are counted, never kept.

Figures per city count: results/s acknowledged per collector and per collector CPU-second, p50/p99 of
the acknowledgement latency per POST, /metrics render time and samples per collector, Prometheus' scrape
durations, victoria-metrics' rows inserted per second by type, peak RSS of every process, and the
results acknowledged against the points counted back in victoria-metrics (any loss: FAIL, exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gzip
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec
import yaml

from qiancheng.collector.registry import ProbeRegistry
from qiancheng.core import __version__
from qiancheng.core.enrollment import ENROLL_PATH, Enrolled, EnrollRequest
from qiancheng.core.kind_settings import (
    DnsSettings,
    HttpSettings,
    IcmpSettings,
    KindSettings,
    StampSettings,
    TcpSettings,
    ThroughputSettings,
)
from qiancheng.core.plan_wire import PLAN_PATH, decode_plan
from qiancheng.core.result import Result
from qiancheng.core.stats import train_stats
from qiancheng.core.wire import PLAN_HEADER, RESULTS_PATH, USER_AGENT_PREFIX, Batch, encode_batch
from qiancheng.probes.config import Job
from qiancheng.probes.measure.mos import voice_figures
from qiancheng.probes.plan_client import plan_jobs

from procfs import cpu_seconds, free_port, machine_busy, status_bytes, wait_listening

ROOT: Final = Path(__file__).resolve().parents[1]
ISPS: Final = ("chinatelecom", "chinaunicom", "chinamobile")
REGIONS: Final = ("east", "southwest", "northwest", "south", "northeast")
SPEEDUPS: Final = (1, 10)
#: the uploader's batch_max_age: a probe pushes what it measured in the last 5 s
BATCH_AGE: Final = 5.0
DRAIN_SECONDS: Final = 180.0
GZIP_LEVEL: Final = 6  # the uploader's
RING_POINTS: Final = 160  # points per collector on the hash ring, as nginx's consistent hash
#: figure sets drawn per (target class, kind): enough variety for the store, cheap to build per result
VARIANTS: Final = 64
TARGETS: Final = {"results_per_cpu_second": 50_000.0, "metrics_seconds": 1.0, "metrics_cities": 250}

# RTT (seconds) per target class: a base drawn once per figure set, then per-packet noise on top
RTT_RANGE: Final = {"edge": (0.002, 0.005), "cloud_pool": (0.003, 0.008), "regional_hub": (0.010, 0.020),
                    "national_hub": (0.030, 0.040), "cdn": (0.015, 0.060), "dns": (0.004, 0.030)}  # fmt: skip
LOSS_RATIO: Final = 0.003  # per packet
FAILURE_RATIO: Final = 0.01  # per http/dns test


# ---------------------------------------------------------------------------------------------- processes


class Processes:
    """Every process the bench starts, each in its own process group, all stopped by `stop_all`."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, command: list[str], log: Path, port: int) -> subprocess.Popen[bytes]:
        """Start with output in `log`; return once it accepts TCP on 127.0.0.1:port."""
        with log.open("wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(process)
        if (problem := wait_listening(process, port, 60)) is not None:
            raise RuntimeError(f"{command[0]} {problem}: {log.read_text()[-2000:]}")
        return process

    def stop_all(self) -> None:
        """SIGTERM to each group, SIGKILL to any still there after 30 s; also on failure."""
        for process in self.started:
            _signal_group(process, signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=10)
        self.started.clear()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------------------------- plan, shards


def city_names(count: int) -> list[str]:
    return [f"c{i:04d}" for i in range(1, count + 1)]


def city_entry(index: int) -> dict[str, str]:
    """A city's variables: edge in 198.18.0.0/16, pool in 198.19.0.0/17, its region's hub in 198.19.255.0/24."""
    region = index % len(REGIONS)
    return {"province": f"p{index % 31:02d}", "region": REGIONS[region], "edge": f"198.18.{index // 256}.{index % 256}",
            "pool": f"198.19.{index // 256}.{index % 256}", "hub": f"198.19.255.{region + 1}"}  # fmt: skip


def write_plan(path: Path, cities: Sequence[str]) -> None:
    """configs/plan.yaml with its cities table replaced by `cities`: the same templates, defaults and overrides
    (less those for a city of the old table, which the plan check would refuse)."""
    plan = yaml.safe_load((ROOT / "configs" / "plan.yaml").read_text())
    plan["cities"] = {name: city_entry(index) for index, name in enumerate(cities, start=1)}
    plan["overrides"] = [o for o in plan["overrides"] if o.get("match", {}).get("city", cities[0]) in plan["cities"]]
    path.write_text(yaml.safe_dump(plan, sort_keys=False))


def ring_hash(text: str) -> int:
    """32 bits of MD5, as libketama takes them: CRC32 of names that differ in a digit or two clusters on the ring."""
    return int.from_bytes(hashlib.md5(text.encode()).digest()[:4], "little")


class HashRing:
    """Consistent hash of city names onto collectors: adding one moves about 1/n of the cities."""

    def __init__(self, shards: int) -> None:
        points = sorted((ring_hash(f"collector-{s}-{i}"), s) for s in range(shards) for i in range(RING_POINTS))
        self._keys = [key for key, _ in points]
        self._shards = [shard for _, shard in points]

    def shard(self, city: str) -> int:
        index = bisect.bisect(self._keys, ring_hash(city)) % len(self._keys)
        return self._shards[index]


# ---------------------------------------------------------------------------------------------- results


def _train(base: float, count: int, rng: random.Random) -> list[float | None]:
    """Per-packet RTTs: the path's base plus queueing noise (exponential, mean a tenth of the base); some lost."""
    return [None if rng.random() < LOSS_RATIO else base + rng.expovariate(10.0 / base) for _ in range(count)]


def _voice(figures: dict[str, float]) -> dict[str, float]:
    median = figures.get("rtt_median_seconds")
    if median is None:
        return figures
    return {**figures, **voice_figures(median / 2, figures.get("jitter_seconds", 0.0), figures["loss_ratio"])}


@dataclass(frozen=True, slots=True)
class Shape:
    """What one test found, without kind, target, times and seq: a Result minus its stamps."""

    success: bool
    duration_seconds: float
    figures: dict[str, float]
    info: dict[str, str]
    samples: list[float | None] = field(default_factory=list)
    error: str | None = None
    detail: str | None = None


def draw_shape(job: Job, rng: random.Random) -> Shape:
    """Figures, info and samples as the job's kind fills them (probes/measure/*.py), from its class's distribution."""
    low, high = RTT_RANGE.get(job.target.target_class, (0.005, 0.050))
    base = rng.uniform(low, high)
    settings = job.settings
    if isinstance(settings, (IcmpSettings, TcpSettings, StampSettings)):
        return _train_shape(job, settings, base, rng)
    if isinstance(settings, HttpSettings):
        return _http_shape(job, base, rng)
    if isinstance(settings, DnsSettings):
        return _dns_shape(job, settings, base, rng)
    return _throughput_shape(job, settings, base, rng)


def _train_shape(job: Job, settings: IcmpSettings | TcpSettings | StampSettings, base: float, rng: random.Random) -> Shape:
    samples = _train(base, settings.count, rng)
    figures = train_stats(samples).figures()
    duration = (settings.count - 1) * float(settings.packet_interval) + base
    info: dict[str, str] = {}
    if isinstance(settings, IcmpSettings):
        info = {"socket": "raw", "size_bytes": str(settings.size), "send_timestamps": "kernel"}
        figures = _voice(figures)
    elif isinstance(settings, StampSettings):
        forward = base * rng.uniform(0.4, 0.6)
        figures = _voice({**figures, "reordered": 0.0, "forward_delay_median_seconds": forward,
                          "backward_delay_median_seconds": base - forward, "clock_error_seconds": 0.0001,
                          "clock_synchronized": 1.0})  # fmt: skip
        info = {"size_bytes": "44", "mode": "unauthenticated", "receive_timestamps": "kernel", "send_timestamps": "kernel",
                "reflector_ttl": "64", "reply_ttl": "60"}  # fmt: skip
    if figures["packets_received"] == 0:
        reason = "timeout" if isinstance(settings, TcpSettings) else "loss"
        return Shape(False, duration + float(settings.timeout), figures, info, samples, reason, "no reply within the timeout")
    return Shape(True, duration, figures, info, samples)


def job_info(job: Job, plan_version: str) -> dict[str, str]:
    """The info a kind fills from the job's own target (its address), and the plan it ran under."""
    address, settings = job.target.address, job.settings
    if isinstance(settings, TcpSettings):
        own = {"address": f"{address}:{settings.port}"}
    elif isinstance(settings, StampSettings):
        own = {"address": address, "port": str(settings.port)}
    elif isinstance(settings, HttpSettings):
        own = {"address": (settings.url or address).split("/")[2]}
    elif isinstance(settings, DnsSettings):
        own = {"resolver": f"{address}:{settings.port}", "query_name": settings.query_name or ""}
    elif isinstance(settings, IcmpSettings):
        own = {"address": address}
    else:
        own = {"address": address, "url": f"http://{address}:9311/{job.kind}"}
    return {**own, "plan": plan_version}


def _http_shape(job: Job, base: float, rng: random.Random) -> Shape:
    connect, tls = base, (base if "https" in job.target.address else 0.0)
    ttfb = connect + tls + base + rng.uniform(0.001, 0.02)
    total = ttfb + rng.uniform(0.0005, 0.3)
    if rng.random() < FAILURE_RATIO:
        return Shape(False, 10.0, {}, {}, error="timeout", detail="no answer within 10 s")
    figures = {"dns_seconds": 0.004, "time_namelookup_seconds": 0.004, "connect_seconds": connect, "time_connect_seconds": connect,
               "tls_seconds": tls, "time_appconnect_seconds": connect + tls, "time_pretransfer_seconds": connect + tls,
               "ttfb_seconds": ttfb, "time_starttransfer_seconds": ttfb, "total_seconds": total, "time_total_seconds": total,
               "status_code": 200.0, "header_bytes": 240.0, "bytes": float(rng.choice((4, 180_000, 2_400_000)))}  # fmt: skip
    return Shape(True, total, figures, {"http_version": "1.1", "server": "nginx"})


def _dns_shape(job: Job, settings: DnsSettings, base: float, rng: random.Random) -> Shape:
    info = {"query_type": settings.query_type, "protocol": settings.protocol, "send_timestamps": "kernel"}
    if rng.random() < FAILURE_RATIO:
        return Shape(False, float(settings.timeout), {}, info, error="timeout", detail="no answer within the timeout")
    figures = {"lookup_seconds": base, "answer_count": 2.0, "rcode_value": 0.0}
    return Shape(True, base, figures, {**info, "rcode": "NOERROR", "flags": "QR RD RA", "answer": "198.18.200.1, 198.18.200.2"})


def _throughput_shape(job: Job, settings: KindSettings, base: float, rng: random.Random) -> Shape:
    streams = settings.streams if isinstance(settings, ThroughputSettings) else 4
    rate = rng.uniform(80e6, 950e6)
    loaded = base + rng.uniform(0.005, 0.08)
    figures = {"throughput_bits_per_second": rate, "throughput_p90_bits_per_second": rate * 1.05,
               "bytes": rate * 10 / 8, "window_seconds": 10.0, "streams": float(streams),
               **{f"stream_{i}_bits_per_second": rate / streams for i in range(streams)},
               "bytes_total": rate * 13 / 8, "warmup_seconds": 3.0, "idle_rtt_seconds": base,
               "loaded_rtt_seconds": loaded, "bufferbloat_seconds": loaded - base, "responsiveness_rpm": 60 / loaded,
               "idle_rpm": 60 / base, "loaded_probes": 30.0, "loaded_probes_failed": 0.0}  # fmt: skip
    return Shape(True, 13.0 + base, figures, {"stopped_by": "window"})


class Shapes:
    """VARIANTS drawn shapes per (target class, kind, target family), shared by every probe of the fleet."""

    def __init__(self, seed: int = 1) -> None:
        self._rng = random.Random(seed)
        self._made: dict[tuple[str, str, str], list[Shape]] = {}

    def pick(self, job: Job) -> Shape:
        # the distribution is the class's (the family: edge-*, national-*, cdn-*): a few thousand shapes in all
        key = (job.target.target_class, job.kind, job.target.name.split("-")[0])
        shapes = self._made.get(key)
        if shapes is None:
            shapes = self._made[key] = [draw_shape(job, self._rng) for _ in range(VARIANTS)]
        return shapes[self._rng.randrange(VARIANTS)]


# ---------------------------------------------------------------------------------------------- probes


@dataclass
class Tally:
    """What the fleet did in one stretch of time: counted, not kept (latencies: one float per POST)."""

    acked: Counter[int] = field(default_factory=Counter)  # results acknowledged, per shard
    batches: Counter[int] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)  # non-200 answers and errors, by status
    latencies: list[float] = field(default_factory=list)


@dataclass
class Fleet:
    """Shared state of the simulated probes: the speed-up, the running tally, totals for the loss check."""

    speed: float = 1.0
    tally: Tally = field(default_factory=Tally)
    acked_by_kind: Counter[str] = field(default_factory=Counter)
    acked_batches: int = 0
    rejected: int = 0  # answers that can never succeed (400, 413, 422): a bench bug, counted as a failure
    in_flight: int = 0  # results of batches sent but not yet acknowledged
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    shapes: Shapes = field(default_factory=Shapes)


@dataclass
class ScheduledJob:
    job: Job
    next_due: float  # monotonic seconds
    info: dict[str, str]  # job_info: the same for every result of the job


@dataclass
class SimProbe:
    """One city box: its identity, its source address, its jobs and its counters."""

    city: str
    isp: str
    shard: int
    source: str
    code: str
    probe_id: str
    token: str = ""
    plan_version: str = ""
    jobs: list[ScheduledJob] = field(default_factory=list)
    seq: int = 0
    batches: int = 0
    measured: int = 0
    acked: int = 0

    @property
    def nominal_per_second(self) -> float:
        """Results per second the plan asks of this probe: Σ 1/interval over its jobs."""
        return sum(1.0 / float(s.job.settings.interval) for s in self.jobs)


def source_address(index: int) -> str:
    """A loopback address of its own for box `index` (all of 127.0.0.0/8 is local on Linux)."""
    host = index + 1
    return f"127.{20 + host // 62_500}.{(host // 250) % 250 + 1}.{host % 250 + 1}"


def make_probes(cities: Sequence[str], ring: HashRing) -> list[SimProbe]:
    probes: list[SimProbe] = []
    for city in cities:
        for isp in ISPS:
            probes.append(SimProbe(city=city, isp=isp, shard=ring.shard(city), source=source_address(len(probes)),
                                   code="", probe_id=f"{city}-{isp}"))  # fmt: skip
    return probes


def make_codes(registry_path: str, probes: Iterable[SimProbe]) -> None:
    """An enrollment code per probe in its shard's registry, as `qiancheng-collector enroll` makes one."""
    registry = ProbeRegistry(registry_path)
    try:
        for probe in probes:
            probe.code = registry.add_code(probe.probe_id, probe.city, probe.isp, ttl_ns=3600 * 10**9)
    finally:
        registry.close()


async def enroll_and_plan(probe: SimProbe, session: aiohttp.ClientSession, url: str) -> None:
    """POST /api/v1/enroll with the code, then GET /api/v1/plan with the token: the probe's jobs."""
    body = msgspec.json.encode(EnrollRequest(code=probe.code))
    async with session.post(url + ENROLL_PATH, data=body, headers={"Content-Type": "application/json"}) as answer:
        text = await answer.read()
        if answer.status != 200:
            raise RuntimeError(f"enroll {probe.probe_id}: {answer.status} {text[:300]!r}")
    enrolled = msgspec.json.decode(text, type=Enrolled)
    probe.token, probe.probe_id = enrolled.token, enrolled.probe_id
    headers = {"Authorization": f"Bearer {probe.token}", "Accept": "application/json"}
    async with session.get(url + PLAN_PATH, headers=headers) as answer:
        text = await answer.read()
        if answer.status != 200:
            raise RuntimeError(f"plan {probe.probe_id}: {answer.status} {text[:300]!r}")
    plan = decode_plan(text)
    probe.plan_version = plan.version
    now, rng = time.monotonic(), random.Random(probe.probe_id)
    # each job starts at a random point of its interval, as probes started at different times would
    probe.jobs = [ScheduledJob(job, now + rng.uniform(0, float(job.settings.interval)), job_info(job, plan.version))
                  for job in plan_jobs(plan, f"plan from {url}")]  # fmt: skip


def set_speed(fleet: Fleet, probes: Iterable[SimProbe], speed: float) -> None:
    """Divide every interval by `speed` from now on; what was left of each wait shrinks alike, so the new
    rate holds at once instead of after the longest interval."""
    now = time.monotonic()
    for probe in probes:
        for scheduled in probe.jobs:
            scheduled.next_due = now + max(0.0, scheduled.next_due - now) * fleet.speed / speed
    fleet.speed = speed


def due_results(probe: SimProbe, fleet: Fleet, until: float) -> list[Result]:
    """The results of every job slot up to `until` (monotonic), each at its slot's wall-clock start."""
    offset_ns = time.time_ns() - round(time.monotonic() * 1e9)
    results = []
    for scheduled in probe.jobs:
        period = float(scheduled.job.settings.interval) / fleet.speed
        while scheduled.next_due <= until:
            shape = fleet.shapes.pick(scheduled.job)
            probe.seq += 1
            results.append(Result(kind=scheduled.job.kind, target=scheduled.job.target,
                                  start_ns=offset_ns + round(scheduled.next_due * 1e9),
                                  duration_seconds=shape.duration_seconds, success=shape.success, error=shape.error,
                                  detail=shape.detail, figures=shape.figures, info={**shape.info, **scheduled.info},
                                  samples=shape.samples, seq=probe.seq))  # fmt: skip
            scheduled.next_due += period
    probe.measured += len(results)
    return results


def batch_body(probe: SimProbe, results: list[Result]) -> bytes:
    """The push body as the uploader makes it: a Batch with the probe's stats, JSON, gzip level 6."""
    probe.batches += 1
    stats = {"spool_backlog": float(len(results)), "spool_backlog_bytes": 900.0 * len(results), "spool_dropped_total": 0.0,
             "spool_rejected_total": 0.0, "measured_total": float(probe.measured), "acked_total": float(probe.acked),
             "uptime_seconds": 3600.0 + probe.batches * BATCH_AGE, "load1": 0.3, "cpus": 4.0, "clock_synced": 1.0,
             "clock_maxerror_seconds": 0.05}  # fmt: skip
    batch = Batch(probe_id=probe.probe_id, batch_id=f"{probe.probe_id}-{probe.batches:09d}", results=results,
                  city=probe.city, isp=probe.isp, stats=stats)  # fmt: skip
    return gzip.compress(encode_batch(batch), compresslevel=GZIP_LEVEL)


async def push(probe: SimProbe, session: aiohttp.ClientSession, url: str, fleet: Fleet, results: list[Result]) -> None:
    """POST one batch until the collector answers 200; retries keep the batch id (the collector stores it once)."""
    body = batch_body(probe, results)
    headers = {"Authorization": f"Bearer {probe.token}", "Content-Type": "application/json", "Content-Encoding": "gzip",
               "User-Agent": USER_AGENT_PREFIX + __version__, PLAN_HEADER: probe.plan_version}  # as the agent sends
    attempt = 0
    fleet.in_flight += len(results)
    while True:
        started = time.perf_counter()
        retry_after: str | None = None
        try:
            async with session.post(url + RESULTS_PATH, data=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=10)) as answer:  # fmt: skip
                await answer.read()
                status, retry_after = answer.status, answer.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            status, why = 0, type(error).__name__
        else:
            why = str(status)
        if status == 200:
            fleet.in_flight -= len(results)
            fleet.tally.latencies.append(time.perf_counter() - started)
            fleet.tally.acked[probe.shard] += len(results)
            fleet.tally.batches[probe.shard] += 1
            fleet.acked_batches += 1
            fleet.acked_by_kind.update(result.kind for result in results)
            probe.acked += len(results)
            return
        fleet.tally.refusals[why] += 1
        if status in (400, 413, 422):
            fleet.in_flight -= len(results)
            fleet.rejected += len(results)
            return
        # the uploader: Retry-After when given, else full-jitter exponential backoff from 1 s up to 60 s;
        # while the bench drains, at most 5 s so that the drain ends
        cap = 5.0 if fleet.stopping.is_set() else 60.0
        delay = min(cap, float(retry_after)) if retry_after else random.uniform(0, min(cap, 2.0**attempt))
        attempt += 1
        await asyncio.sleep(delay)


async def run_probe(probe: SimProbe, session: aiohttp.ClientSession, url: str, fleet: Fleet) -> None:
    """Every BATCH_AGE seconds (each box at its own phase), push what became due since the last push."""
    await asyncio.sleep(random.uniform(0, BATCH_AGE))
    while not fleet.stopping.is_set():
        try:
            await asyncio.wait_for(fleet.stopping.wait(), BATCH_AGE)
            return  # stopping: a window not yet closed is not measured, so nothing is left unsent
        except TimeoutError:
            pass
        results = due_results(probe, fleet, time.monotonic())
        if results:
            await push(probe, session, url, fleet, results)


# ---------------------------------------------------------------------------------------------- the stack


@dataclass
class Shard:
    index: int
    port: int
    cities: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stack:
    """The servers of one run: victoria-metrics, the collectors, Prometheus."""

    workdir: Path
    vm: subprocess.Popen[bytes]
    vm_url: str
    shards: list[Shard]
    prometheus: subprocess.Popen[bytes]
    prometheus_url: str
    scrape_interval: float


def start_vm(processes: Processes, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    binary = _tool("victoria-metrics")
    # latencyOffset 0: queries see samples as soon as they are written (the loss check reads right after).
    # dedup 1ms: a point written twice counts once, as InfluxDB overwrites it. A write that outlasts the
    # collector's store.influx.timeout is answered 503 but may still land; the probe's retry writes it again
    # (docs/operations.md says to run victoria-metrics so when it is the collectors' store).
    process = processes.start([binary, f"-storageDataPath={workdir / 'vm'}", f"-httpListenAddr=127.0.0.1:{port}",
                               "-loggerLevel=ERROR", "-retentionPeriod=100y", "-search.latencyOffset=0s",
                               "-dedup.minScrapeInterval=1ms"],
                              workdir / "vm.log", port)  # fmt: skip
    return process, f"http://127.0.0.1:{port}"


def start_collector(processes: Processes, workdir: Path, shard: Shard, vm_url: str, probes: list[SimProbe]) -> None:
    store = workdir / f"collector-{shard.index}.db"  # the registry goes beside it: collector-N.registry.db
    config = workdir / f"collector-{shard.index}.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {shard.port}}}\n"
        f"store:\n  backend: influx\n  path: \"{store}\"\n"
        f"  influx: {{url: \"{vm_url}\", org: qiancheng, bucket: results, timeout: 10s}}\n"
        "plan: {file: plan.yaml}\n"
        "log_level: warning\n"
    )  # every limit at its default: the bench measures the collector as it ships
    make_codes(str(store.with_suffix(".registry.db")), [p for p in probes if p.shard == shard.index])
    command = [sys.executable, "-m", "qiancheng.collector.main", "--config", str(config)]
    shard.process = processes.start(command, workdir / f"collector-{shard.index}.log", shard.port)


def start_prometheus(processes: Processes, workdir: Path, shards: list[Shard], vm_url: str,
                     interval: float) -> tuple[subprocess.Popen[bytes], str]:  # fmt: skip
    port = free_port()
    config = workdir / "prometheus.yml"
    targets = json.dumps([f"127.0.0.1:{shard.port}" for shard in shards])
    config.write_text(
        f"global: {{scrape_interval: {interval:g}s, scrape_timeout: {interval:g}s, evaluation_interval: {interval:g}s}}\n"
        f"scrape_configs:\n  - job_name: qiancheng\n    static_configs:\n      - targets: {targets}\n"
        f"remote_write:\n  - url: {vm_url}/api/v1/write\n"
    )
    process = processes.start([_tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'prom'}",
                               f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], workdir / "prometheus.log", port)  # fmt: skip
    return process, f"http://127.0.0.1:{port}"


def _tool(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        raise SystemExit(f"{name} is not on PATH")
    return binary


def start_stack(processes: Processes, workdir: Path, cities: list[str], collectors: int, probes: list[SimProbe],
                ring: HashRing, scrape_interval: float) -> Stack:  # fmt: skip
    write_plan(workdir / "plan.yaml", cities)
    vm, vm_url = start_vm(processes, workdir)
    shards = [Shard(index, free_port(), [c for c in cities if ring.shard(c) == index]) for index in range(collectors)]
    for shard in shards:
        start_collector(processes, workdir, shard, vm_url, probes)
    prometheus, prometheus_url = start_prometheus(processes, workdir, shards, vm_url, scrape_interval)
    return Stack(workdir, vm, vm_url, shards, prometheus, prometheus_url, scrape_interval)


def collector_pid(shard: Shard) -> int:
    assert shard.process is not None
    return shard.process.pid


# ---------------------------------------------------------------------------------------------- measuring


async def get_text(session: aiohttp.ClientSession, url: str, params: dict[str, str] | None = None) -> str:
    for attempt in range(3):
        try:
            async with session.get(url, params=params, timeout=aiohttp.ClientTimeout(total=120)) as answer:
                text = await answer.text()
                if answer.status != 200:
                    raise RuntimeError(f"GET {url}: {answer.status} {text[:300]}")
                return text
        except aiohttp.ServerDisconnectedError:
            # a kept-alive connection the server closed as it was reused: a fresh one answers
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def vm_rows(session: aiohttp.ClientSession, vm_url: str) -> dict[str, float]:
    """victoria-metrics' own vm_rows_inserted_total by type (influx, promremotewrite, ...)."""
    rows: dict[str, float] = {}
    for match in re.finditer(r'^vm_rows_inserted_total\{type="([^"]+)"\} (\S+)$', await get_text(session, vm_url + "/metrics"), re.M):
        rows[match.group(1)] = float(match.group(2))
    return rows


async def prom_query(session: aiohttp.ClientSession, base: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    answer = json.loads(await get_text(session, base + "/api/v1/query", params))
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def by_instance(result: list[dict[str, Any]]) -> dict[str, float]:
    return {s["metric"].get("instance", ""): float(s["value"][1]) for s in result}


@dataclass(frozen=True)
class Snapshot:
    at: float  # monotonic
    wall: float
    cpu: dict[str, float]  # CPU seconds by process name
    vm_rows: dict[str, float]
    busy: tuple[float, float]


async def snapshot(session: aiohttp.ClientSession, stack: Stack) -> Snapshot:
    return Snapshot(time.monotonic(), time.time(), process_cpu(stack), await vm_rows(session, stack.vm_url), machine_busy())


def processes_of(stack: Stack) -> dict[str, int]:
    pids = {f"collector-{s.index}": collector_pid(s) for s in stack.shards}
    return {**pids, "victoria-metrics": stack.vm.pid, "prometheus": stack.prometheus.pid, "simulator": os.getpid()}


def process_cpu(stack: Stack) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in processes_of(stack).items()}


@dataclass
class PhaseFigures:
    cities: int
    speed: float
    seconds: float
    nominal: float  # results/s the plan asks of the fleet at this speed
    acked: dict[int, int]
    batches: dict[int, int]
    cpu: dict[str, float]
    vm_rows_per_second: dict[str, float]
    machine_busy: float
    latencies: list[float]
    refusals: Counter[str]
    ended_wall: float
    # from Prometheus after the run (prometheus_figures):
    commit_seconds: dict[str, float] = field(default_factory=dict)  # mean store commit per batch, by instance
    scrapes: dict[str, float] = field(default_factory=dict)  # scrapes of each collector in the phase (each renders)

    def collector_cpu(self, index: int) -> float:
        return self.cpu[f"collector-{index}"]


async def measure_phase(session: aiohttp.ClientSession, stack: Stack, fleet: Fleet, probes: list[SimProbe],
                        speed: float, seconds: float) -> PhaseFigures:  # fmt: skip
    """Set the speed, let one batch age pass (the new rate reaches the collectors), then measure `seconds`."""
    set_speed(fleet, probes, speed)
    await asyncio.sleep(BATCH_AGE + 1)
    before = await snapshot(session, stack)
    fleet.tally = Tally()
    await asyncio.sleep(seconds)
    tally, after = fleet.tally, await snapshot(session, stack)
    elapsed = after.at - before.at
    busy = (after.busy[0] - before.busy[0]) / max(1.0, after.busy[1] - before.busy[1])
    return PhaseFigures(
        cities=len({p.city for p in probes}), speed=speed, seconds=elapsed,
        nominal=speed * sum(p.nominal_per_second for p in probes), acked=dict(tally.acked), batches=dict(tally.batches),
        cpu={k: after.cpu[k] - before.cpu[k] for k in after.cpu},
        vm_rows_per_second={k: (after.vm_rows.get(k, 0) - before.vm_rows.get(k, 0)) / elapsed for k in after.vm_rows},
        machine_busy=busy, latencies=tally.latencies, refusals=tally.refusals, ended_wall=after.wall,
    )  # fmt: skip


async def prometheus_figures(session: aiohttp.ClientSession, stack: Stack, phase: PhaseFigures) -> None:
    """Commit time and scrapes per collector in `phase`, from Prometheus. Asked after the run: a scrape's
    samples carry its start time but are written when it ends, which on a saturated machine is after the
    phase; every scrape renders the whole exposition, also one that timed out in Prometheus."""
    window = f"{phase.seconds + stack.scrape_interval:.0f}s"  # at least two scrapes in the window
    phase.commit_seconds = by_instance(await prom_query(
        session, stack.prometheus_url, f"increase(qiancheng_ingest_commit_seconds_sum[{window}]) / "
        f"increase(qiancheng_ingest_commit_seconds_count[{window}])", phase.ended_wall))  # fmt: skip
    phase.scrapes = by_instance(await prom_query(
        session, stack.prometheus_url, f"count_over_time(up[{phase.seconds:.0f}s])", phase.ended_wall))  # fmt: skip


@dataclass
class ScrapeFigures:
    seconds: float  # wall time of one GET /metrics, ours
    cpu_seconds: float  # the collector's CPU for it
    samples: int
    bytes: int


async def scrape(session: aiohttp.ClientSession, shard: Shard) -> ScrapeFigures:
    cpu, started = cpu_seconds(collector_pid(shard)), time.perf_counter()
    text = await get_text(session, shard.url + "/metrics")
    seconds, cpu = time.perf_counter() - started, cpu_seconds(collector_pid(shard)) - cpu
    samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return ScrapeFigures(seconds, cpu, samples, len(text.encode()))


async def scrapes_alone(session: aiohttp.ClientSession, stack: Stack, render_seconds: float) -> list[ScrapeFigures]:
    """One timed GET /metrics per collector while Prometheus is stopped (SIGSTOP), so that no scrape of its
    own overlaps ours and the collector's CPU over the GET is the render's alone."""
    stack.prometheus.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(min(render_seconds, stack.scrape_interval) + 1)  # a render already started finishes
        return [await scrape(session, shard) for shard in stack.shards]
    finally:
        stack.prometheus.send_signal(signal.SIGCONT)


async def settle(session: aiohttp.ClientSession, vm_url: str) -> None:
    """Until everything written is searchable: write a marker last, flush, wait until it reads back."""
    mark = f"qdb_marker,run={time.time_ns()} seen=1 {time.time_ns()}"
    async with session.post(vm_url + "/write", data=mark.encode()) as answer:
        await answer.read()
    run = mark.split("=", 1)[1].split(" ", 1)[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        await get_text(session, vm_url + "/internal/force_flush")
        if (await get_text(session, vm_url + "/api/v1/export", {"match[]": f'qdb_marker_seen{{run="{run}"}}'})).strip():
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("victoria-metrics did not make recent writes searchable within 60 s")


async def stored_points(session: aiohttp.ClientSession, vm_url: str) -> tuple[dict[str, int], int, int]:
    """Points in victoria-metrics: qiancheng_result by kind (its `seq` field: one per result), and the
    qiancheng_probe points (one per batch) with the results they say they carried. `job=""`: the points
    the collectors wrote, not the series Prometheus remote-wrote."""
    at = time.time() + 60

    async def one(expr: str) -> list[dict[str, Any]]:
        return await prom_query(session, vm_url, expr, at)

    per_kind = {s["metric"].get("kind", ""): int(float(s["value"][1]))
                for s in await one('sum by (kind) (count_over_time(qiancheng_result_seq{job=""}[1d]))')}  # fmt: skip
    batches = await one('sum(count_over_time(qiancheng_probe_results{job=""}[1d]))')
    carried = await one('sum(sum_over_time(qiancheng_probe_results{job=""}[1d]))')
    return per_kind, int(float(batches[0]["value"][1])) if batches else 0, int(float(carried[0]["value"][1])) if carried else 0


# ---------------------------------------------------------------------------------------------- one city count


@dataclass
class CityRun:
    """Everything measured for one city count."""

    cities: int
    probes: int
    nominal_per_probe: float
    shards: list[Shard]
    phases: list[PhaseFigures]
    scrapes: list[ScrapeFigures]
    prometheus_scrape: dict[str, tuple[float, float]]  # instance → (last, max) scrape_duration_seconds
    prometheus_series: float
    peak_rss: dict[str, int]
    acked_by_kind: dict[str, int]
    acked_batches: int
    stored_by_kind: dict[str, int]
    stored_batches: int
    stored_carried: int
    rejected: int
    abandoned: int  # results in batches never answered by the end of the drain
    enroll_seconds: float
    scrape_interval: float


async def run_cities(stack: Stack, probes: list[SimProbe], seconds: float, speeds: Sequence[float], scrape_interval: float) -> CityRun:
    fleet = Fleet()
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(p.source, 0), limit=1)) for p in probes]
    control = aiohttp.ClientSession()
    tasks: list[asyncio.Task[None]] = []
    try:
        started = time.monotonic()
        gate = asyncio.Semaphore(32)  # a few dozen boxes enroll at once: the collectors' answers are quick

        async def enroll(probe: SimProbe, session: aiohttp.ClientSession) -> None:
            async with gate:
                await enroll_and_plan(probe, session, stack.shards[probe.shard].url)

        await asyncio.gather(*(enroll(p, s) for p, s in zip(probes, sessions, strict=True)))
        enroll_seconds = time.monotonic() - started
        tasks = [asyncio.create_task(run_probe(p, s, stack.shards[p.shard].url, fleet)) for p, s in zip(probes, sessions, strict=True)]
        await asyncio.sleep(BATCH_AGE + 1)  # warm-up: every probe's first batch made its series in the collectors
        phases = [await measure_phase(control, stack, fleet, probes, speed, seconds) for speed in speeds]
        fleet.stopping.set()
        # pushes in flight finish (with their retries); those still unanswered after DRAIN_SECONDS are abandoned
        # as the uploader abandons them at a stop: counted apart, the collector may have stored them
        await asyncio.wait(tasks, timeout=DRAIN_SECONDS)
        abandoned = fleet.in_flight
        await asyncio.sleep(scrape_interval + 1)  # Prometheus sees the last batches
        last = by_instance(await prom_query(control, stack.prometheus_url, "scrape_duration_seconds"))
        worst = by_instance(await prom_query(control, stack.prometheus_url, "max_over_time(scrape_duration_seconds[10m])"))
        head = re.search(r"^prometheus_tsdb_head_series (\S+)$", await get_text(control, stack.prometheus_url + "/metrics"), re.M)
        for phase in phases:
            await prometheus_figures(control, stack, phase)
        scrapes = await scrapes_alone(control, stack, max(last.values(), default=0.0))
        await settle(control, stack.vm_url)
        stored_by_kind, stored_batches, carried = await stored_points(control, stack.vm_url)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for session in sessions:
            await session.close()
        await control.close()
    return CityRun(
        cities=len({p.city for p in probes}), probes=len(probes), nominal_per_probe=sum(p.nominal_per_second for p in probes) / len(probes),
        shards=stack.shards, phases=phases, scrapes=scrapes, prometheus_scrape={k: (v, worst.get(k, v)) for k, v in last.items()},
        prometheus_series=float(head.group(1)) if head else 0.0,
        peak_rss={name: status_bytes(pid, "VmHWM") for name, pid in processes_of(stack).items()},
        acked_by_kind=dict(fleet.acked_by_kind), acked_batches=fleet.acked_batches, stored_by_kind=stored_by_kind,
        stored_batches=stored_batches, stored_carried=carried, rejected=fleet.rejected, abandoned=abandoned, enroll_seconds=enroll_seconds,
        scrape_interval=scrape_interval,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- printing


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_run(run: CityRun, interval: float) -> None:
    print(f"\n== {run.cities} cities, {run.probes} probes, {len(run.shards)} collectors; nominal {run.nominal_per_probe:.3f} "
          f"results/s per probe = {run.nominal_per_probe * run.probes:,.0f} results/s for the fleet "
          f"(enrollment + plan of every probe: {run.enroll_seconds:.1f} s)")  # fmt: skip
    for phase in run.phases:
        print_phase(run, phase)
    print(f"{'collector':>11} {'cities':>6} {'GET /metrics s':>14} {'its CPU s':>9} {'samples':>9} {'MB':>6} "
          f"{'Prom scrape s last|max':>22} {'peak RSS MB':>11}")  # fmt: skip
    for shard, figures in zip(run.shards, run.scrapes, strict=True):
        last, worst = run.prometheus_scrape.get(f"127.0.0.1:{shard.port}", (math.nan, math.nan))
        print(f"{shard.index:>11} {len(shard.cities):>6} {figures.seconds:>14.3f} {figures.cpu_seconds:>9.2f} {figures.samples:>9,} "
              f"{figures.bytes / 1e6:>6.1f} {last:>11.3f} | {worst:<8.3f} {run.peak_rss[f'collector-{shard.index}'] / 2**20:>11.0f}")  # fmt: skip
    others = ", ".join(f"{name} {rss / 2**20:.0f}" for name, rss in run.peak_rss.items() if not name.startswith("collector"))
    print(f"peak RSS MB: {others} (simulator: peak since the first city count); Prometheus head series "
          f"{run.prometheus_series:,.0f}; scrape every {interval:g} s")  # fmt: skip


def print_phase(run: CityRun, phase: PhaseFigures) -> None:
    acked = sum(phase.acked.values())
    print(f"-- {phase.speed:g}x: offered {phase.nominal:,.0f} results/s (plan x{phase.speed:g}), acknowledged "
          f"{acked / phase.seconds:,.0f}/s over {phase.seconds:.1f} s; ack latency per POST p50 "
          f"{percentile(phase.latencies, 50) * 1e3:.1f} ms, p99 {percentile(phase.latencies, 99) * 1e3:.1f} ms "
          f"({len(phase.latencies)} POSTs); machine CPU busy {phase.machine_busy:.0%} of {os.cpu_count()} cores")  # fmt: skip
    print(f"{'collector':>11} {'results/s':>10} {'batches/s':>9} {'CPU s/s':>8} {'results/CPU-s':>13} {'commit ms':>9}")
    for shard in run.shards:
        results, used = phase.acked.get(shard.index, 0), phase.collector_cpu(shard.index)
        commit = phase.commit_seconds.get(f"127.0.0.1:{shard.port}", math.nan)
        print(f"{shard.index:>11} {results / phase.seconds:>10,.0f} {phase.batches.get(shard.index, 0) / phase.seconds:>9.1f} "
              f"{used / phase.seconds:>8.2f} {results / used if used else math.nan:>13,.0f} {commit * 1e3:>9.1f}")  # fmt: skip
    cpu = ", ".join(f"{name} {seconds / phase.seconds:.2f}" for name, seconds in phase.cpu.items() if not name.startswith("collector"))
    rows = ", ".join(f"{kind} {rate:,.0f}/s" for kind, rate in sorted(phase.vm_rows_per_second.items()) if rate)
    refused = ", ".join(f"{why}: {n}" for why, n in phase.refusals.most_common()) or "none"
    print(f"   CPU s/s: {cpu}; victoria-metrics rows inserted: {rows}; non-200 answers: {refused}")


def collector_totals(phase: PhaseFigures, shards: list[Shard]) -> tuple[float, float]:
    """(results acknowledged, collector CPU seconds) over all collectors."""
    return float(sum(phase.acked.values())), sum(phase.collector_cpu(s.index) for s in shards)


def print_growth(runs: list[CityRun]) -> None:
    print("\n== cost as the fleet grows (1x phase)")
    print(f"{'cities':>6} {'results/s':>9} {'CPU µs/result':>13} {'collector RSS MB max':>20} {'/metrics samples':>16} "
          f"{'GET /metrics s max':>18} {'Prom scrape s max':>17} {'Prom series':>11} {'Prom RSS MB':>11} {'VM RSS MB':>9}")  # fmt: skip
    for run in runs:
        phase = run.phases[0]
        results, cpu = collector_totals(phase, run.shards)
        rss = max(v for k, v in run.peak_rss.items() if k.startswith("collector"))
        print(f"{run.cities:>6} {results / phase.seconds:>9,.0f} {cpu / results * 1e6 if results else math.nan:>13.1f} "
              f"{rss / 2**20:>20.0f} {sum(s.samples for s in run.scrapes):>16,} {max(s.seconds for s in run.scrapes):>18.3f} "
              f"{max(w for _, w in run.prometheus_scrape.values()):>17.3f} {run.prometheus_series:>11,.0f} "
              f"{run.peak_rss['prometheus'] / 2**20:>11.0f} {run.peak_rss['victoria-metrics'] / 2**20:>9.0f}")  # fmt: skip


def print_targets(runs: list[CityRun]) -> bool:
    """PASS/MISS per target, and what bounds each missed one; True if nothing was lost."""
    biggest = runs[-1]
    fast = biggest.phases[-1]
    results, cpu = collector_totals(fast, biggest.shards)
    per_core = results / cpu if cpu else 0.0
    print(f"\n== targets ({biggest.cities} cities)")
    print(f"{verdict(per_core >= TARGETS['results_per_cpu_second'])} results durably stored per collector CPU-second at "
          f"{fast.speed:g}x: {per_core:,.0f} (target >= {TARGETS['results_per_cpu_second']:,.0f}); "
          f"acknowledged {results / fast.seconds:,.0f}/s of {fast.nominal:,.0f}/s offered")  # fmt: skip
    if per_core < TARGETS["results_per_cpu_second"]:
        print_cpu_bound(biggest)
    worst = max(biggest.scrapes, key=lambda s: s.seconds)
    shard = biggest.shards[biggest.scrapes.index(worst)]
    applies = len(shard.cities) >= 0.8 * TARGETS["metrics_cities"]  # a smaller shard says little about this target
    print(f"{verdict(worst.seconds <= TARGETS['metrics_seconds']) if applies else 'n/a '} /metrics of a shard of ~{TARGETS['metrics_cities']} cities "
          f"in <= {TARGETS['metrics_seconds']:g} s: slowest shard {shard.index} ({len(shard.cities)} cities, {worst.samples:,} samples) "
          f"{worst.seconds:.3f} s, of which {worst.cpu_seconds:.2f} s the collector's CPU")  # fmt: skip
    if worst.seconds > TARGETS["metrics_seconds"]:
        print(f"   bounded by rendering in the collector: {worst.cpu_seconds / worst.samples * 1e6:.2f} µs CPU per sample, "
              f"{worst.samples / len(shard.cities):,.0f} samples per city")  # fmt: skip
    return print_loss(runs)


def print_cpu_bound(run: CityRun) -> None:
    """Collector CPU per result at 1x and 10x: split into a cost per POST and a cost per result, less /metrics."""
    slow, fast = run.phases[0], run.phases[-1]
    rows, renders = [], []
    for phase in (slow, fast):
        results, cpu = collector_totals(phase, run.shards)
        posts = float(sum(phase.batches.values()))
        renders.append(render_cpu(run, phase))
        rows.append((results, posts, cpu - renders[-1]))
    (r1, p1, c1), (r2, p2, c2) = rows
    determinant = r1 * p2 - r2 * p1
    busy = max(sum(fast.collector_cpu(s.index) for s in run.shards) / fast.seconds, 0.0)
    print(f"   bound: collector CPU. At {fast.speed:g}x the collectors used {busy:.2f} CPU s/s (machine {fast.machine_busy:.0%} busy); "
          f"/metrics renders for Prometheus took about {renders[-1] / fast.seconds:.2f} CPU s/s of it")  # fmt: skip
    per_result = (c1 * p2 - c2 * p1) / determinant if determinant else math.nan
    per_post = (r1 * c2 - r2 * c1) / determinant if determinant else math.nan
    if per_result > 0 and per_post > 0:
        print(f"   solved from the 1x and {fast.speed:g}x phases (less /metrics): {per_post * 1e3:.2f} ms CPU per POST + "
              f"{per_result * 1e6:.1f} µs per result; at the best batch (500) that is "
              f"{1 / (per_result + per_post / 500):,.0f} results per CPU-second")  # fmt: skip
    else:
        print(f"   CPU per POST and per result not separable from these two phases (solved: {per_post * 1e3:.2f} ms, "
              f"{per_result * 1e6:.1f} µs): noise or /metrics dominates")  # fmt: skip
    commits = [v for v in fast.commit_seconds.values() if math.isfinite(v)]
    if commits:
        print(f"   store write (commit) per batch at {fast.speed:g}x: mean {sum(commits) / len(commits) * 1e3:.1f} ms "
              "(wall time, the event loop is free meanwhile)")  # fmt: skip


def render_cpu(run: CityRun, phase: PhaseFigures) -> float:
    """CPU seconds the collectors spent rendering /metrics for Prometheus in `phase`: its scrapes of each, times
    that collector's CPU for one render measured alone at the end (the largest exposition: an upper bound)."""
    total = 0.0
    for shard, alone in zip(run.shards, run.scrapes, strict=True):
        total += phase.scrapes.get(f"127.0.0.1:{shard.port}", 0.0) * alone.cpu_seconds
    return total


def print_loss(runs: list[CityRun]) -> bool:
    """Lost: acknowledged results missing from the store. Results of abandoned batches may be stored without
    an acknowledgement (the collector stored them, the answer came too late): stored may exceed acked by those."""
    ok = True
    for run in runs:
        acked, stored = sum(run.acked_by_kind.values()), sum(run.stored_by_kind.values())
        kinds = ", ".join(f"{k} {run.acked_by_kind.get(k, 0)}/{run.stored_by_kind.get(k, 0)}"
                          for k in sorted(set(run.acked_by_kind) | set(run.stored_by_kind)))  # fmt: skip
        lost = any(run.acked_by_kind.get(k, 0) > run.stored_by_kind.get(k, 0) for k in run.acked_by_kind)
        good = not lost and acked <= stored <= acked + run.abandoned and not run.rejected
        ok = ok and good
        print(f"{'PASS' if good else 'FAIL'} no loss, {run.cities} cities: {acked:,} results acknowledged, {stored:,} "
              f"qiancheng_result points (acked/stored by kind: {kinds}); {run.acked_batches:,} batches acknowledged, "
              f"{run.stored_batches:,} qiancheng_probe points carrying {run.stored_carried:,} results; rejected {run.rejected}; "
              f"abandoned unanswered at the end {run.abandoned:,}")  # fmt: skip
    return ok


# ---------------------------------------------------------------------------------------------- main


def one_city_count(workdir: Path, count: int, args: argparse.Namespace, speeds: Sequence[float]) -> CityRun:
    cities = city_names(count)
    ring = HashRing(args.collectors)
    probes = make_probes(cities, ring)
    processes = Processes()
    try:
        stack = start_stack(processes, workdir, cities, args.collectors, probes, ring, args.scrape_interval)
        return asyncio.run(run_cities(stack, probes, args.seconds, speeds, args.scrape_interval))
    finally:
        processes.stop_all()
        shutil.rmtree(workdir / "vm", ignore_errors=True)  # bound the disk: each city count has its own store
        shutil.rmtree(workdir / "prom", ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cities", default="100,1000", help="city counts, one run each; the last also at 10x (default 100,1000)")
    parser.add_argument("--collectors", type=int, default=4, help="collectors the cities are sharded over (default 4)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase (default 20)")
    # configs/prometheus/prometheus.yml, as shipped, scrapes every 15 s
    parser.add_argument("--scrape-interval", type=float, default=15.0, help="Prometheus' scrape interval, s (default 15)")
    args = parser.parse_args()
    counts = sorted(int(c) for c in args.cities.split(","))
    print(f"fleet bench: {counts} cities x {len(ISPS)} probes, {args.collectors} collectors (store.backend: influx) -> one "
          f"victoria-metrics, one Prometheus (scrape {args.scrape_interval:g} s, remote_write); {args.seconds:g} s per phase; "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    runs = []
    with tempfile.TemporaryDirectory(prefix="qiancheng-fleet-") as tmp:
        for count in counts:
            workdir = Path(tmp) / f"cities-{count}"
            workdir.mkdir()
            speeds = SPEEDUPS if count == counts[-1] else SPEEDUPS[:1]
            runs.append(one_city_count(workdir, count, args, speeds))
            print_run(runs[-1], args.scrape_interval)
    print_growth(runs)
    ok = print_targets(runs)
    print("result: " + ("no loss" if ok else "FAIL: results lost or rejected"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
