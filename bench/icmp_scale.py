#!/usr/bin/env python3
"""ICMP at scale: CPU per echo, peak RSS and RTT smearing of qiancheng against fping and two exporters.

For 1, 100 and 1000 loopback targets (all of 127.0.0.0/8 is local on Linux, so the kernel answers every
echo) each tool pings every target once a second, one tool after another on the same machine:

- qiancheng: the real agent (`qiancheng-probe run`) with one icmp job per target (interval 1s, count 1,
  timeout 500ms: a stored result per echo), pushing to a real collector started here; echoes, replies
  and RTTs are read back from the collector's store, so only results that went the whole way count;
- qiancheng_train: the same agent with trains of ten echoes a second apart every 10 s (the same echo
  rate, a result per ten echoes, as smokeping-style monitoring would configure it);
- fping: one `fping -l -p 1000 -i <1000/N> -D` process over all targets, its per-reply lines parsed;
- prometheus-smokeping-prober: all targets at `--ping.interval=1s`, its request counter and RTT
  histogram (fine buckets given here) read before and after the window;
- prometheus-blackbox-exporter: an `icmp` module, `/probe?module=icmp&target=...` fetched for every
  target once a second by this script, spread over the second as Prometheus spreads its scrapes.

After a warm-up, a window of `--seconds` is measured: CPU from /proc/PID/stat (utime + stime, children
included) per 1000 echoes sent in the window, peak RSS (VmHWM) over the whole life of the process, the
median RTT of the window and its shift from the same tool's 1-target median (smearing), failed sends as
the tool reports them, receive-queue drops of the tool's ICMP sockets (/proc/net/raw, icmp) and the
system-wide Icmp OutErrors. The collector's own CPU and RSS are shown on a line of their own, not counted
against the probe. Needs root (raw ICMP sockets for every tool).

    .venv/bin/python bench/icmp_scale.py [--seconds 60] [--targets 1,100,1000] [--tools qiancheng,fping,...]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import aiohttp

PROBE, TOKEN = "bench-icmp-01", "bench-token-3c9e1f7a5b2d4e6f8a0c1e3b5d7f9a2c"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WARMUP_SECONDS = 5.0
TOOLS = ("qiancheng", "qiancheng_train", "fping", "smokeping_prober", "blackbox_exporter")
OURS = ("qiancheng", "qiancheng_train")
SMOKEPING = "/usr/bin/prometheus-smokeping-prober"
BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"
# Fine buckets (5 µs up to 0.5 ms) so the prober's median is read to the same resolution as the others'.
SMOKEPING_BUCKETS = [i * 5e-6 for i in range(1, 101)] + [6e-4, 8e-4, 1e-3, 2e-3, 5e-3, 1e-2, 0.1, 1.0]


# ---------------------------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of a process, seconds (fields 14-17 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the most resident memory the process has held, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def socket_drops(pid: int) -> int:
    """Datagrams the kernel dropped on the process's raw and ping sockets (full receive buffer)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    drops = 0
    for table in ("raw", "raw6", "icmp", "icmp6"):
        path = Path(f"/proc/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            columns = line.split()
            if len(columns) > 9 and columns[9] in inodes:
                drops += int(columns[-1])
    return drops


def snmp_counters() -> dict[str, int]:
    """/proc/net/snmp as {"Icmp.OutErrors": n, ...}."""
    lines = Path("/proc/net/snmp").read_text().splitlines()
    counters: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2]):
        prefix, *keys = names.split()
        for key, value in zip(keys, values.split()[1:]):
            counters[prefix.rstrip(":") + "." + key] = int(value)
    return counters


# ---------------------------------------------------------------------------------------------- results


@dataclass
class Window:
    """CPU and system ICMP errors of one process over the measured window."""

    pid: int
    start_wall: float = 0.0
    end_wall: float = 0.0
    cpu: float = 0.0
    icmp_out_errors: int = 0
    _cpu0: float = 0.0
    _snmp0: dict[str, int] = field(default_factory=dict)

    def open(self) -> None:
        self._snmp0 = snmp_counters()
        self._cpu0 = cpu_seconds(self.pid)
        self.start_wall = time.time()

    def close(self) -> None:
        self.cpu = cpu_seconds(self.pid) - self._cpu0
        self.end_wall = time.time()
        snmp = snmp_counters()
        self.icmp_out_errors = snmp["Icmp.OutErrors"] - self._snmp0["Icmp.OutErrors"]


@dataclass
class Measurement:
    tool: str
    targets: int
    seconds: float
    echoes: int
    replies: int
    cpu_seconds: float
    peak_rss_bytes: int
    rtts: list[float]
    send_errors: int
    socket_drops: int
    icmp_out_errors: int
    note: str = ""

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_seconds / self.echoes * 1000 if self.echoes else float("nan")

    @property
    def median_rtt(self) -> float:
        return statistics.median(self.rtts) if self.rtts else float("nan")


def addresses(count: int) -> list[str]:
    """`count` distinct loopback addresses, 127.77.0.1 first (the 1-target run uses the same one)."""
    return [f"127.77.{i // 250}.{i % 250 + 1}" for i in range(count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_tcp(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


@contextmanager
def started(args: list[str], log: Path, stdout: Path | None = None,
            stop_signal: int = signal.SIGTERM) -> Iterator[subprocess.Popen[bytes]]:
    """A process running for the block; `stop_signal` (then SIGKILL) at the end, also on failure."""
    with open(log, "ab") as errors, open(stdout or log, "ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=errors, start_new_session=True)
    try:
        yield process
    finally:
        stop(process, stop_signal)


def stop(process: subprocess.Popen[bytes], stop_signal: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(stop_signal)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure_window(process: subprocess.Popen[bytes], seconds: float,
                   before: Callable[[], None] = lambda: None, after: Callable[[], None] = lambda: None) -> Window:
    """Warm up, then hold a window of `seconds`; `before`/`after` read the tool's own counters."""
    name = Path(cast(list[str], process.args)[0]).name
    time.sleep(WARMUP_SECONDS)
    if process.poll() is not None:
        raise RuntimeError(f"{name} exited with {process.returncode} during warm-up")
    window = Window(process.pid)
    before()
    window.open()
    time.sleep(seconds)
    window.close()
    after()
    if process.poll() is not None:
        raise RuntimeError(f"{name} exited with {process.returncode} during the window")
    return window


# ---------------------------------------------------------------------------------------------- tools


def run_qiancheng(targets: list[str], seconds: float, workdir: Path) -> list[Measurement]:
    """One test of one echo per target per second: a stored result for every echo."""
    return _run_agent("qiancheng", "{interval: 1s, count: 1, timeout: 500ms}", 1.0, targets, seconds, workdir)


def run_qiancheng_train(targets: list[str], seconds: float, workdir: Path) -> list[Measurement]:
    """Trains of ten echoes a second apart, one per target every 10 s: the same echo rate, a result per ten."""
    return _run_agent("qiancheng_train", "{interval: 10s, count: 10, packet_interval: 1s, timeout: 500ms}", 1.0,
                      targets, seconds, workdir)


def _run_agent(tool: str, icmp: str, packet_interval: float, targets: list[str], seconds: float,
               workdir: Path) -> list[Measurement]:
    """The probe agent pushing to a collector, both real processes; returns the probe's and the collector's rows."""
    port = free_port()
    collector_db = workdir / "collector.db"
    (workdir / "collector.yaml").write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"store: {{backend: sqlite, path: \"{collector_db}\"}}\n"
        f"log_level: warning\n"
        f"probes:\n  - {{id: {PROBE}, token_sha256: {hashlib.sha256(TOKEN.encode()).hexdigest()}}}\n"
        f"limits: {{max_targets_per_probe: 10000}}\n"  # one probe with up to 1000 targets
    )
    # What an operator writes for per-second pings of many targets: one icmp job per target.
    (workdir / "probe.yaml").write_text(
        f"probe: {{id: {PROBE}, city: bench, isp: loopback}}\n"
        f"collector: {{url: \"http://127.0.0.1:{port}\", token: \"{TOKEN}\"}}\n"
        f"spool: {{path: \"{workdir / 'spool.db'}\"}}\n"
        f"log_level: warning\n"
        # every train may be running at once (they mostly wait between echoes)
        f"scheduler: {{max_concurrency: {max(32, len(targets))}}}\n"
        f"defaults:\n  icmp: {icmp}\n"
        f"targets:\n" + "".join(f"  - {{name: t{i}, address: {a}, kinds: [icmp]}}\n" for i, a in enumerate(targets))
    )
    python = sys.executable
    with started([python, "-m", "qiancheng.collector.main", "--config", str(workdir / "collector.yaml")],
                 workdir / "collector.log") as collector:
        wait_tcp(port)
        with started([python, "-m", "qiancheng.probes.cli", "run", "--config", str(workdir / "probe.yaml")],
                     workdir / "probe.log") as probe:
            collector_cpu0 = 0.0

            def collector_before() -> None:
                nonlocal collector_cpu0
                collector_cpu0 = cpu_seconds(collector.pid)

            window = measure_window(probe, seconds, before=collector_before)
            collector_cpu = cpu_seconds(collector.pid) - collector_cpu0
            # Trains still running hold echoes of the window: let them finish (a stop would cancel them).
            time.sleep(10 * packet_interval + 1.0 if "count: 1," not in icmp else 1.0)
            rss, drops = peak_rss_bytes(probe.pid), socket_drops(probe.pid)
            stop(probe)  # SIGTERM: the agent flushes its spool to the collector before it exits
        collector_rss = peak_rss_bytes(collector.pid)
    # Echo i of a train left about i packet intervals after the train's start: count those sent in the window.
    longest_train = 10 * packet_interval
    with sqlite3.connect(f"file:{collector_db}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT start_ns, samples, info FROM results WHERE kind = 'icmp' AND start_ns >= ? AND start_ns < ?",
            (int((window.start_wall - longest_train) * 1e9), int(window.end_wall * 1e9)),
        ).fetchall()
    echoes, send_errors = 0, 0
    rtts: list[float] = []
    for start_ns, samples_json, info_json in rows:
        samples: list[float | None] = json.loads(samples_json)
        inside = [s for i, s in enumerate(samples)
                  if window.start_wall <= start_ns / 1e9 + i * packet_interval < window.end_wall]
        echoes += len(inside)
        rtts.extend(s for s in inside if s is not None)
        if inside and (errors := json.loads(info_json).get("send_errors")):
            send_errors += int(errors.split(":")[0])
    probe_row = Measurement(tool, len(targets), seconds, echoes, len(rtts), window.cpu, rss, rtts,
                            send_errors, drops, window.icmp_out_errors)
    collector_row = Measurement(f"({tool} collector)", len(targets), seconds, echoes, len(rtts), collector_cpu,
                                collector_rss, [], 0, 0, 0, note="not counted against the probe")
    return [probe_row, collector_row]


_FPING_REPLY = re.compile(r"^\[(?P<time>\d+\.\d+)\] (?P<host>\S+)\s+: \[\d+\], (?:(?P<bytes>\d+) bytes, (?P<ms>[\d.]+) ms|timed out)")


def run_fping(targets: list[str], seconds: float, workdir: Path) -> list[Measurement]:
    """One fping process in loop mode over all targets; every reply line carries its RTT."""
    fping = shutil.which("fping")
    if fping is None:
        raise RuntimeError("fping not installed")
    # -i spaces all sends so one round of N targets fits the 1 s period (fping's default, 10 ms, would not).
    spacing_ms = min(10.0, 1000.0 / len(targets))
    output = workdir / "fping.out"
    args = [fping, "-l", "-p", "1000", "-i", f"{spacing_ms:g}", "-t", "500", "-D", *targets]
    # SIGINT, not SIGTERM: fping then leaves its loop and exits normally, flushing its buffered output.
    with started(args, workdir / "fping.log", stdout=output, stop_signal=signal.SIGINT) as process:
        window = measure_window(process, seconds)
        rss, drops = peak_rss_bytes(process.pid), socket_drops(process.pid)
    echoes, rtts = 0, []
    for line in output.read_text(errors="replace").splitlines():
        match = _FPING_REPLY.match(line)
        if match is None or not window.start_wall <= float(match["time"]) < window.end_wall:
            continue
        echoes += 1
        if match["ms"] is not None:
            rtts.append(float(match["ms"]) / 1000)
    errors = (workdir / "fping.log").read_text(errors="replace").count("error while sending")
    return [Measurement("fping", len(targets), seconds, echoes, len(rtts), window.cpu, rss, rtts, errors, drops,
                        window.icmp_out_errors)]


def _scrape(url: str) -> dict[str, float]:
    """A Prometheus text exposition as {series: value} (comments skipped)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


def _sum(series: dict[str, float], metric: str, label: str = "") -> float:
    return sum(v for k, v in series.items() if k.startswith(metric + "{") and label in k)


def _histogram_median(buckets: dict[float, float]) -> float:
    """Median of a cumulative histogram ({upper bound: count}) by linear interpolation within its bucket."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return float("nan")
    half, lower, below = total / 2, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= half:
            inside = buckets[bound] - below
            return lower + (bound - lower) * ((half - below) / inside if inside else 0.0)
        lower, below = bound, buckets[bound]
    return float("nan")


def run_smokeping(targets: list[str], seconds: float, workdir: Path) -> list[Measurement]:
    """prometheus-smokeping-prober over all targets at 1 s; counters and histogram read around the window."""
    port = free_port()
    config = workdir / "smokeping_prober.yml"
    config.write_text("targets:\n  - hosts: [" + ", ".join(targets) + "]\n"
                      "    interval: 1s\n    network: ip4\n    protocol: icmp\n    size: 56\n")
    args = [SMOKEPING, "--privileged", f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            f"--config.file={config}", "--buckets=" + ",".join(f"{b:g}" for b in SMOKEPING_BUCKETS)]
    snapshots: list[dict[str, float]] = []
    url = f"http://127.0.0.1:{port}/metrics"
    with started(args, workdir / "smokeping.log") as process:
        wait_tcp(port)
        window = measure_window(process, seconds, before=lambda: snapshots.append(_scrape(url)),
                                after=lambda: snapshots.append(_scrape(url)))
        rss, drops = peak_rss_bytes(process.pid), socket_drops(process.pid)
    first, last = snapshots
    echoes = int(_sum(last, "smokeping_requests_total") - _sum(first, "smokeping_requests_total"))
    replies = int(_sum(last, "smokeping_response_duration_seconds_count") -
                  _sum(first, "smokeping_response_duration_seconds_count"))
    buckets = {}
    for bound in [*SMOKEPING_BUCKETS, float("inf")]:
        label = 'le="+Inf"' if bound == float("inf") else f'le="{bound:g}"'
        buckets[bound] = (_sum(last, "smokeping_response_duration_seconds_bucket", label) -
                          _sum(first, "smokeping_response_duration_seconds_bucket", label))
    median = _histogram_median(buckets)
    return [Measurement("smokeping_prober", len(targets), seconds, echoes, replies, window.cpu, rss,
                        [median] if replies else [], 0, drops, window.icmp_out_errors,
                        note="median from its histogram (5 µs buckets)")]


async def _scrape_probes(port: int, targets: list[str], until: float) -> list[tuple[float, bool, float | None]]:
    """Fetch /probe for every target once a second, spread over the second; (time, success, rtt) each."""
    records: list[tuple[float, bool, float | None]] = []
    rtt = re.compile(r'^probe_icmp_duration_seconds\{phase="rtt"\} (\S+)$', re.M)
    success = re.compile(r"^probe_success (\S+)$", re.M)
    # Prometheus sends its scrape timeout; the exporter gives the probe that minus half a second.
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": "1"}
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def loop(index: int, target: str) -> None:
            url = f"http://127.0.0.1:{port}/probe?module=icmp&target={target}"
            offset = index / len(targets)
            start = time.time()
            slot = int(start) + 1 + offset
            while slot < until:
                await asyncio.sleep(max(0.0, slot - time.time()))
                at = time.time()
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                        text = await response.text()
                    ok = (m := success.search(text)) is not None and float(m[1]) == 1.0
                    r = rtt.search(text)
                    records.append((at, ok, float(r[1]) if ok and r else None))
                except (aiohttp.ClientError, TimeoutError):
                    records.append((at, False, None))
                slot += max(1, int(time.time() - slot) + 1)  # an overrun skips the missed slots

        await asyncio.gather(*(loop(i, t) for i, t in enumerate(targets)))
    return records


def run_blackbox(targets: list[str], seconds: float, workdir: Path) -> list[Measurement]:
    """prometheus-blackbox-exporter's icmp module, each target's /probe fetched once a second by this script."""
    port = free_port()
    config = workdir / "blackbox.yml"
    config.write_text("modules:\n  icmp:\n    prober: icmp\n    timeout: 1s\n    icmp:\n"
                      "      preferred_ip_protocol: ip4\n      ip_protocol_fallback: false\n")
    args = [BLACKBOX, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    with started(args, workdir / "blackbox.log") as process:
        wait_tcp(port)
        end = time.time() + WARMUP_SECONDS + seconds + 1.0
        records: list[tuple[float, bool, float | None]] = []
        scraper = _Thread(lambda: records.extend(asyncio.run(_scrape_probes(port, targets, end))))
        scraper.start()
        window = measure_window(process, seconds)
        rss, drops = peak_rss_bytes(process.pid), socket_drops(process.pid)
        scraper.join()
    inside = [r for r in records if window.start_wall <= r[0] < window.end_wall]
    rtts = [r[2] for r in inside if r[2] is not None]
    return [Measurement("blackbox_exporter", len(targets), seconds, len(inside), len(rtts), window.cpu, rss, rtts,
                        0, drops, window.icmp_out_errors, note="probes fetched by the bench at 1/s per target")]


class _Thread:
    """A thread running `function`, re-raising its exception on join."""

    def __init__(self, function: Callable[[], None]) -> None:
        import threading

        self._error: BaseException | None = None

        def body() -> None:
            try:
                function()
            except BaseException as error:  # noqa: BLE001 - handed to join()
                self._error = error

        self._thread = threading.Thread(target=body, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


RUNNERS: dict[str, Callable[[list[str], float, Path], list[Measurement]]] = {
    "qiancheng": run_qiancheng,
    "qiancheng_train": run_qiancheng_train,
    "fping": run_fping,
    "smokeping_prober": run_smokeping,
    "blackbox_exporter": run_blackbox,
}


# ---------------------------------------------------------------------------------------------- report


def print_table(rows: list[Measurement]) -> None:
    baseline = {r.tool: r.median_rtt for r in rows if r.targets == min(x.targets for x in rows if x.tool == r.tool)}
    header = (f"{'tool':<18} {'targets':>7} {'echoes':>7} {'lost':>6} {'CPU s/1k echoes':>15} {'peak RSS MB':>11} "
              f"{'median RTT ms':>13} {'smear ms':>9} {'send err':>8} {'sock drops':>10} {'icmp OutErr':>11}  note")
    print(header)
    print("-" * len(header))
    for r in rows:
        has_rtt = bool(r.rtts)
        smear = r.median_rtt - baseline.get(r.tool, float("nan")) if has_rtt else float("nan")
        print(f"{r.tool:<18} {r.targets:>7} {r.echoes:>7} {r.echoes - r.replies:>6} {r.cpu_per_1000:>15.4f} "
              f"{r.peak_rss_bytes / 1e6:>11.1f} {_ms(r.median_rtt, has_rtt):>13} {_ms(smear, has_rtt, signed=True):>9} "
              f"{r.send_errors:>8} {r.socket_drops:>10} {r.icmp_out_errors:>11}  {r.note}")


def _ms(seconds: float, present: bool, signed: bool = False) -> str:
    if not present or seconds != seconds:
        return "-"
    if seconds == float("inf"):
        return "> 1000"  # beyond the histogram's last finite bucket
    return f"{seconds * 1000:+.3f}" if signed else f"{seconds * 1000:.3f}"


CPU_AIM = 1.0  # CPU per echo / fping's (the exporters are lower anchors, shown without a target)
RSS_AIM_MB = 40.0  # peak RSS with the largest target count
SMEAR_AIM_MS = 0.1  # median RTT at the largest target count against at the smallest


def report(rows: list[Measurement]) -> None:
    print_table(rows)
    print()
    targets: list[tuple[str, bool]] = []
    for tool in OURS:
        ours = {r.targets: r for r in rows if r.tool == tool}
        for n, us in sorted(ours.items()):
            peers = [r for r in rows if r.targets == n and r.tool in TOOLS and r.tool not in OURS]
            parts = []
            for peer in peers:
                ratio = us.cpu_per_1000 / peer.cpu_per_1000 if peer.cpu_per_1000 else float("nan")
                parts.append(f"{peer.tool} {ratio:.2f}")
                if n == max(ours) and peer.tool == "fping":
                    targets.append((f"{tool}: CPU per echo at {n} targets / fping's {ratio:.2f} (needs <= {CPU_AIM:g})",
                                    ratio <= CPU_AIM))  # fmt: skip
            print(f"{tool} at {n} targets, CPU per echo / peer's: " + (", ".join(parts) or "no peer measured"))
        if not ours:
            continue
        top, low = ours[max(ours)], ours[min(ours)]
        smear = (top.median_rtt - low.median_rtt) * 1000
        rss = top.peak_rss_bytes / 1e6
        print(f"{tool} at {top.targets} targets: peak RSS {rss:.1f} MB, median RTT {top.median_rtt * 1000:.3f} ms "
              f"vs {low.median_rtt * 1000:.3f} ms at {low.targets} (smear {smear:+.3f} ms), "
              f"send errors {top.send_errors}, socket drops {top.socket_drops}")  # fmt: skip
        targets.append((f"{tool}: peak RSS at {top.targets} targets {rss:.1f} MB (needs <= {RSS_AIM_MB:g})",
                        rss <= RSS_AIM_MB))  # fmt: skip
        if low.targets != top.targets:
            targets.append((f"{tool}: smear {smear:+.3f} ms (needs within +-{SMEAR_AIM_MS:g})", abs(smear) <= SMEAR_AIM_MS))
        targets.append((f"{tool}: send errors + socket drops {top.send_errors + top.socket_drops} (needs 0)",
                        top.send_errors + top.socket_drops == 0))  # fmt: skip
    for text, ok in targets:
        print(f"target: {text} {'PASS' if ok else 'MISS'}")
    missed = sum(not ok for _, ok in targets)
    print(f"summary: {len(targets) - missed} of {len(targets)} ICMP-at-scale targets met, {'PASS' if not missed else 'MISS'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per run (after a warm-up)")
    parser.add_argument("--targets", default="1,100,1000", help="comma-separated target counts")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ",".join(TOOLS))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("icmp_scale: needs root (raw ICMP sockets for every tool)", file=sys.stderr)
        return 2
    counts = [int(n) for n in args.targets.split(",")]
    tools = args.tools.split(",")
    if unknown := set(tools) - set(TOOLS):
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    rows: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="icmp-scale-") as scratch:
        for tool in tools:
            for n in counts:
                workdir = Path(scratch) / f"{tool}-{n}"
                workdir.mkdir()
                print(f"# {tool}, {n} targets, {args.seconds:g} s ...", file=sys.stderr, flush=True)
                rows.extend(RUNNERS[tool](addresses(n), args.seconds, workdir))
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
