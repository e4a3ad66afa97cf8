#!/usr/bin/env python3
"""A small box, emulated: the probe and its peers on a quarter of one core, on the test network's links.

Every client-side process (our probe, iperf3's client, curl) runs inside a CPU cgroup this script makes
and removes: cgroup v1 `cpu.cfs_period_us` 10 000 and `cpu.cfs_quota_us` 2 500, or cgroup v2 `cpu.max`
"2500 10000" where the kernel has only v2. A short period, so that throttling is a 7.5 ms pause and not a
75 ms stall. The servers (responder, iperf3 server, the delay relay) run unconstrained in their own
namespace. Each peer gets the same budget as ours, one tool at a time, taking turns.

- download and upload: `qiancheng-probe once --kind download|upload` against `iperf3 -c [-R]`, 4
  streams, on tbf 100 Mbit/s and 1 Gbit/s links; target: ours >= 0.95x iperf3's goodput.
- http: `qiancheng-probe once --kind http` against curl on one object (one second of the link, at most
  32 MiB); target: ours <= 1.1x curl's time_total (rates are shown: the object's size over that time).
- The same on an unshaped veth: the most each tool reaches on a quarter of a core (the box's ceiling).
- icmp: the agent with 100 targets behind the delay relay (5 ms), one echo per target per second,
  pushing to a collector; target: median RTT within 0.1 ms of the relay's truth.

The table at the end names, for every kind, the highest line rate it measured truly at this budget.
Needs root (namespaces, tc, cgroups), iperf3 and curl.

    .venv/bin/python bench/small_box.py [--runs 2] [--icmp-seconds 20]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import netlab_env  # noqa: F401 - first: the project's venv, and the tests' network library on sys.path
from procfs import status_bytes

from tests.conftest import PYTHON
from tests.netlab.lab import Lab, Netns
from tests.netlab.relay import RelaySettings, echo_trips
from tests.netlab.test_throughput_accuracy import IPERF_PORT, MBIT, RESPONDER_PORT, STREAMS, Bed, build_bed

PREFIX = "qsb"
SHARE_US, PERIOD_US = 2_500, 10_000  # a quarter of one core, in 10 ms periods
WINDOW_SECONDS, WARMUP_SECONDS = 3, 1
GOODPUT_FLOOR = 0.95  # ours / iperf3
HTTP_CEILING = 1.1  # ours / curl, time to last byte
ICMP_TOLERANCE = 0.1e-3  # |our median - truth|
ICMP_TARGETS = 100
ICMP_DELAY = 0.005  # round trip set on the relay
ICMP_NETWORK = "198.19.250"  # the targets' /24, on the server's loopback
MAX_HTTP_BYTES = 32 * 1024 * 1024
LINKS: list[tuple[str, int | None]] = [("100 Mbit/s", 100 * MBIT), ("1 Gbit/s", 1000 * MBIT), ("unshaped", None)]
PROBE, TOKEN = "small-box-01", "small-box-token-5e1d3c7b9a2f4e6d8c0b"


# ---------------------------------------------------------------------------------------------- the budget


class CpuBudget:
    """A CPU cgroup holding every process started through `argv()` or `run()`; removed on exit, also on failure."""

    def __init__(self, quota_us: int = SHARE_US, period_us: int = PERIOD_US) -> None:
        name = f"qiancheng-small-box-{os.getpid()}"
        v1 = Path("/sys/fs/cgroup/cpu")
        if (v1 / "cpu.cfs_quota_us").exists():
            self.path, self.version = v1 / name, 1
        elif "cpu" in Path("/sys/fs/cgroup/cgroup.controllers").read_text().split():
            self.path, self.version = Path("/sys/fs/cgroup") / name, 2
        else:
            raise SystemExit("no CPU cgroup controller (v1 cpu or v2 cpu) on this kernel")
        self.quota_us, self.period_us = quota_us, period_us

    def __enter__(self) -> CpuBudget:
        self.path.mkdir()
        if self.version == 1:
            (self.path / "cpu.cfs_period_us").write_text(str(self.period_us))
            (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        else:
            subtree = self.path.parent / "cgroup.subtree_control"
            if "cpu" not in subtree.read_text().split():
                subtree.write_text("+cpu")
            (self.path / "cpu.max").write_text(f"{self.quota_us} {self.period_us}")
        return self

    def __exit__(self, *exc: object) -> None:
        procs = self.path / "cgroup.procs"
        for _ in range(50):  # what is left (a process being stopped) goes back to the parent first
            pids = procs.read_text().split()
            if not pids:
                break
            for pid in pids:
                try:
                    (self.path.parent / "cgroup.procs").write_text(pid)
                except OSError:
                    pass  # it exited meanwhile
            time.sleep(0.1)
        self.path.rmdir()

    def argv(self, ns: Netns, *argv: str) -> list[str]:
        """`argv` run in `ns` inside the group. The group is joined first (`sh -c 'echo $$ > procs; exec
        "$@"'`): `ip netns exec` mounts the namespace's own /sys, where the group is not to be seen."""
        return ["sh", "-c", f'echo $$ > {self.path / "cgroup.procs"} && exec "$@"', "sh",
                "ip", "netns", "exec", ns.name, *argv]  # fmt: skip

    def run(self, ns: Netns, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(ns, *argv), capture_output=True, text=True, timeout=timeout)

    def throttled(self) -> int:
        """Periods in which the group ran out of its quota so far."""
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, value = line.split()
            if key in ("nr_throttled",):
                return int(value)
        return 0

    def describe(self) -> str:
        knobs = (f"cpu.cfs_quota_us {self.quota_us} / cpu.cfs_period_us {self.period_us}" if self.version == 1
                 else f"cpu.max {self.quota_us} {self.period_us}")  # fmt: skip
        return f"cgroup v{self.version} {self.path} ({knobs}: {self.quota_us / self.period_us:.2f} of a core)"


# ---------------------------------------------------------------------------------------------- line tests


@dataclass
class Row:
    """One kind on one link: ours and the peer's figure, and whether ours is true there."""

    kind: str
    link: str
    ours: float
    peer: float
    unit: str
    ratio: float
    ok: bool | None  # None: no target on this link (the unshaped ceiling)


def goodput_ours(bed: Bed, budget: CpuBudget, direction: str) -> float:
    done = budget.run(
        bed.client, PYTHON, "-m", "qiancheng.probes.cli", "once", "--json", "--kind", direction,
        "--streams", str(STREAMS), "--duration", f"{WINDOW_SECONDS}s", "--warmup", f"{WARMUP_SECONDS}s",
        "--max-bytes", f"{STREAMS * 9}GiB", f"{bed.server_address}:{RESPONDER_PORT}", timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"probe {direction} exit {done.returncode}: {done.stdout} {done.stderr}")
    return float(json.loads(done.stdout)["figures"]["throughput_bits_per_second"])


def goodput_iperf3(bed: Bed, budget: CpuBudget, direction: str) -> float:
    reverse = ["-R"] if direction == "download" else []
    done = budget.run(
        bed.client, "iperf3", "-c", bed.server_address, "-p", str(IPERF_PORT), "-P", str(STREAMS),
        "-t", str(WINDOW_SECONDS), "-O", str(WARMUP_SECONDS), "--json", *reverse, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"iperf3 exit {done.returncode}: {done.stdout[-2000:]} {done.stderr}")
    return float(json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"])


def http_ours(bed: Bed, budget: CpuBudget, url: str, size: int) -> float:
    done = budget.run(bed.client, PYTHON, "-m", "qiancheng.probes.cli", "once", "--json", "--kind", "http",
                          url, timeout=120)  # fmt: skip
    figures = json.loads(done.stdout)["figures"] if done.returncode == 0 else {}
    if figures.get("bytes") != size:
        raise SystemExit(f"probe http exit {done.returncode}: {done.stdout} {done.stderr}")
    return float(figures["time_total_seconds"])


def http_curl(bed: Bed, budget: CpuBudget, url: str, size: int) -> float:
    done = budget.run(bed.client, "curl", "-sS", "--noproxy", "*", "-o", "/dev/null",
                          "-w", "%{time_total} %{size_download}", url, timeout=120)  # fmt: skip
    total, received = done.stdout.split() if done.returncode == 0 else ("0", "0")
    if int(received) != size:
        raise SystemExit(f"curl exit {done.returncode}: {done.stdout} {done.stderr}")
    return float(total)


def taking_turns(runs: int, ours: Callable[[], float], peer: Callable[[], float]) -> tuple[float, float]:
    """Medians of `runs` runs of each, alternating which goes first."""
    mine: list[float] = []
    theirs: list[float] = []
    for run in range(runs):
        if run % 2:
            theirs.append(peer())
            mine.append(ours())
        else:
            mine.append(ours())
            theirs.append(peer())
    return statistics.median(mine), statistics.median(theirs)


def line_rows(lab: Lab, budget: CpuBudget, label: str, rate: int | None, runs: int) -> list[Row]:
    bed = build_bed(lab, rate)
    rows: list[Row] = []
    for direction in ("download", "upload"):
        mine, theirs = taking_turns(runs, lambda: goodput_ours(bed, budget, direction),
                                    lambda: goodput_iperf3(bed, budget, direction))  # fmt: skip
        ratio = mine / theirs
        rows.append(Row(direction, label, mine / MBIT, theirs / MBIT, "Mbit/s", ratio,
                        None if rate is None else ratio >= GOODPUT_FLOOR))  # fmt: skip
    size = MAX_HTTP_BYTES if rate is None else min(MAX_HTTP_BYTES, rate // 8)
    url = f"http://{bed.server_address}:{RESPONDER_PORT}/download?bytes={size}"
    mine, theirs = taking_turns(max(runs, 3), lambda: http_ours(bed, budget, url, size),
                                lambda: http_curl(bed, budget, url, size))  # fmt: skip
    ratio = theirs / mine  # of rates, as the other rows: size over time
    rows.append(Row("http", label, size * 8 / mine / MBIT, size * 8 / theirs / MBIT, "Mbit/s", ratio,
                    None if rate is None else mine <= HTTP_CEILING * theirs))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------- icmp


@dataclass(frozen=True)
class IcmpRun:
    echoes: int
    replies: int
    ours_median: float
    truth_median: float
    peak_rss: int

    @property
    def error(self) -> float:
        return self.ours_median - self.truth_median


@contextmanager
def stopped_at_exit(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def icmp_run(lab: Lab, budget: CpuBudget, seconds: float, workdir: Path) -> IcmpRun:
    client, server = lab.namespace("icmpc"), lab.namespace("icmps")
    link = lab.delayed_link(client, server, RelaySettings(delay=ICMP_DELAY / 2))
    targets = [f"{ICMP_NETWORK}.{i + 1}" for i in range(ICMP_TARGETS)]
    for address in targets:
        server.run("ip", "addr", "add", f"{address}/32", "dev", "lo")
    server.run("ip", "link", "set", "lo", "up")
    client.run("ip", "route", "add", f"{ICMP_NETWORK}.0/24", "dev", link.a_dev)
    port = 19_400
    database = workdir / "collector.db"
    (workdir / "collector.yaml").write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\nstore: {{backend: sqlite, path: \"{database}\"}}\n"
        f"log_level: warning\nprobes:\n  - {{id: {PROBE}, token_sha256: {hashlib.sha256(TOKEN.encode()).hexdigest()}}}\n"
    )  # fmt: skip
    (workdir / "probe.yaml").write_text(
        f"probe: {{id: {PROBE}, city: smallbox, isp: lab}}\n"
        f"collector: {{url: \"http://127.0.0.1:{port}\", token: \"{TOKEN}\"}}\n"
        f"spool: {{path: \"{workdir / 'spool.db'}\"}}\nlog_level: warning\n"
        f"scheduler: {{max_concurrency: {ICMP_TARGETS}}}\n"
        "defaults:\n  icmp: {interval: 1s, count: 1, timeout: 500ms}\n"
        "targets:\n" + "".join(f"  - {{name: t{i}, address: {a}, kinds: [icmp]}}\n" for i, a in enumerate(targets))
    )  # fmt: skip
    client.run("ip", "link", "set", "lo", "up")
    with (workdir / "collector.log").open("wb") as log:
        collector = client.popen(PYTHON, "-m", "qiancheng.collector.main", "--config", str(workdir / "collector.yaml"),
                                 stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    with stopped_at_exit(collector):
        client.wait_listening(port)
        with (workdir / "probe.log").open("wb") as log:
            probe = subprocess.Popen(budget.argv(client, PYTHON, "-m", "qiancheng.probes.cli", "run", "--config",
                                                 str(workdir / "probe.yaml")), stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        with stopped_at_exit(probe):
            time.sleep(5.0)  # start-up on a quarter of a core, and the first round of every target
            begin = time.time()
            time.sleep(seconds)
            end = time.time()
            peak = status_bytes(probe.pid, "VmHWM")  # `ip netns exec` and `sh` exec into the probe: one pid
            if probe.poll() is not None:
                raise SystemExit(f"the probe exited {probe.returncode}: {(workdir / 'probe.log').read_text()[-2000:]}")
        time.sleep(1.0)  # the last batch, flushed at the probe's stop, reaches the store
    records = [r for r in link.log() if r.protocol == "icmp"]
    spans = [t.span_seconds for trips in echo_trips(records).values() for t in trips if t.span_seconds is not None]
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT samples FROM results WHERE kind = 'icmp' AND start_ns >= ? AND start_ns < ?",
                          (int(begin * 1e9), int(end * 1e9))).fetchall()  # fmt: skip
    samples = [s for (text,) in rows for s in json.loads(text)]
    rtts = [s for s in samples if s is not None]
    if not rtts or not spans:
        raise SystemExit(f"no ICMP results ({len(rows)} rows) or no relay truth ({len(spans)} spans)")
    return IcmpRun(len(samples), len(rtts), statistics.median(rtts), statistics.median(spans), peak)


# ---------------------------------------------------------------------------------------------- report


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else "PASS" if ok else "MISS"


def truly_up_to(rows: list[Row], kind: str) -> str:
    """The fastest shaped link on which the kind met its target (ours true there), and the ceiling."""
    met = [row for row in rows if row.kind == kind and row.ok]
    best = max((int(row.link.split()[0]) * (1000 if "Gbit" in row.link else 1) for row in met), default=0)
    ceiling = next(row for row in rows if row.kind == kind and row.ok is None)
    shown = "none tested" if not best else f"{best / 1000:g} Gbit/s" if best >= 1000 else f"{best} Mbit/s"
    return f"{shown} (ceiling at this budget: ours {ceiling.ours:.0f}, peer {ceiling.peer:.0f} Mbit/s)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=2, help="runs of each tool per case (medians; http takes 3+)")
    parser.add_argument("--icmp-seconds", type=float, default=20.0, help="ICMP window in seconds (default 20)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/small_box.py builds namespaces and cgroups and needs root", file=sys.stderr)
        return 2
    started = time.monotonic()
    rows: list[Row] = []
    with CpuBudget() as budget, tempfile.TemporaryDirectory(prefix="qiancheng-small-box-") as tmp:
        print(f"client side in {budget.describe()}; servers unconstrained; {args.runs} runs per tool, taking turns")
        print(f"{'kind':<9} {'link':<11} {'ours':>9} {'peer':>9} {'unit':<7} {'ours/peer':>9}  target")
        for label, rate in LINKS:
            with Lab(PREFIX) as lab:
                for row in line_rows(lab, budget, label, rate, args.runs):
                    rows.append(row)
                    goal = (f">= {GOODPUT_FLOOR} x iperf3" if row.kind != "http" else f"time <= {HTTP_CEILING} x curl's")
                    print(f"{row.kind:<9} {row.link:<11} {row.ours:>9.1f} {row.peer:>9.1f} {row.unit:<7} "
                          f"{row.ratio:>9.2f}  {goal if row.ok is not None else 'ceiling'} {verdict(row.ok)}", flush=True)  # fmt: skip
        with Lab(PREFIX) as lab:
            icmp = icmp_run(lab, budget, args.icmp_seconds, Path(tmp))
        throttled = budget.throttled()
    icmp_ok = abs(icmp.error) <= ICMP_TOLERANCE
    print(f"icmp: {ICMP_TARGETS} targets, 1 s interval, {ICMP_DELAY * 1e3:g} ms relay: {icmp.echoes} echoes, "
          f"{icmp.replies} replies, median ours {icmp.ours_median * 1e3:.3f} ms truth {icmp.truth_median * 1e3:.3f} ms, "
          f"error {icmp.error * 1e3:+.3f} ms (needs within {ICMP_TOLERANCE * 1e3:g}) {verdict(icmp_ok)}; "
          f"agent peak RSS {icmp.peak_rss / 2**20:.1f} MiB")  # fmt: skip
    print(f"periods throttled in the group: {throttled}")
    print("measured truly at a quarter of a core:")
    for kind in ("download", "upload", "http"):
        print(f"  {kind:<9} up to {truly_up_to(rows, kind)}")
    print(f"  icmp      {ICMP_TARGETS} targets a second, median within {abs(icmp.error) * 1e3:.3f} ms of the truth")
    verdicts = [row.ok for row in rows if row.ok is not None] + [icmp_ok]
    missed = verdicts.count(False)
    print(f"summary: {len(verdicts) - missed} of {len(verdicts)} small-box targets met, {verdict(missed == 0)}, "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip
    return 0 if missed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
