#!/usr/bin/env python3
"""Throughput benchmark: our download/upload goodput and CPU cost against iperf3's, on the same links,
in the same run, with the same number of streams. Builds the test network itself (network namespaces,
tbf, nftables loss, the TUN delay relay; needs root, iperf3, tc and nft).

Links: tbf 100 Mbit/s, tbf 1 Gbit/s, an unshaped veth, then 100 Mbit/s with 1 % and 5 % random loss
and with 10 ms and 20 ms each way through the delay relay (20 and 40 ms round trip). Each case runs both tools in
turns, alternating which goes first, RUNS times, and compares medians. CPU seconds per GB moved count
both ends: ours the probe process and the responder, iperf3's its client and server. Ours includes
the start of a Python process per run (measured apart and shown; it weighs most on the slow links,
where a run moves only ~0.05 GB), so a second figure leaves it out.

    .venv/bin/python bench/throughput.py [--runs N]

Every shaped case prints a line with `ratio <ours/iperf3>` and the probe's CPU per GB against iperf3's
client's (start-up excluded: it is measured apart and printed); the two targets (goodput >= 0.95x,
probe CPU per GB <= 1.2x) print PASS or MISS, and the last line is a one-line summary. The exit status
is 1 only when goodput misses.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import netlab_env  # noqa: F401 - first: the project's venv, and the tests' network library on sys.path

from tests.conftest import PYTHON
from tests.netlab.lab import Lab
from tests.netlab.test_throughput_accuracy import (
    MBIT,
    PREFIX,
    STREAMS,
    WINDOW_SECONDS,
    Goodput,
    build_bed,
    children_cpu,
    compare,
    lossy,
    median_rate,
)

# (label, tbf rate in bit/s or None, loss %, one-way delay in s, directions)
CASES: list[tuple[str, int | None, float, float, tuple[str, ...]]] = [
    ("tbf 100 Mbit/s", 100 * MBIT, 0.0, 0.0, ("download", "upload")),
    ("tbf 1 Gbit/s", 1000 * MBIT, 0.0, 0.0, ("download", "upload")),
    ("unshaped veth", None, 0.0, 0.0, ("download", "upload")),
    ("tbf 100 Mbit/s, 1 % loss", 100 * MBIT, 1.0, 0.0, ("download", "upload")),
    ("tbf 100 Mbit/s, 5 % loss", 100 * MBIT, 5.0, 0.0, ("download", "upload")),
    ("tbf 100 Mbit/s, 20 ms RTT", 100 * MBIT, 0.0, 0.010, ("download", "upload")),
    ("tbf 100 Mbit/s, 20 ms each way", 100 * MBIT, 0.0, 0.020, ("download",)),
]


CPU_CEILING = 1.2  # probe CPU per GB / iperf3 client's, start-up excluded


def _cpu_per_gb(runs: list[Goodput], startup: float = 0.0) -> float:
    return sum(g.cpu_seconds - startup for g in runs) / (sum(g.bytes_total for g in runs) / 1e9)


def _client_cpu_per_gb(runs: list[Goodput], startup: float = 0.0) -> float:
    return sum(g.client_cpu_seconds - startup for g in runs) / (sum(g.bytes_total for g in runs) / 1e9)


def _startup_cpu(lab: Lab) -> float:
    """CPU seconds of a probe run that is all start-up: `once --kind download` on a port where nothing
    listens, so that the interpreter, the command and the kind's modules load, and the test fails at its
    first connect. Median of 3."""
    ns = lab.namespace("startup")
    ns.run("ip", "link", "set", "lo", "up")
    times = []
    for _ in range(3):
        before = children_cpu()
        ns.run(PYTHON, "-m", "qiancheng.probes.cli", "once", "--json", "--kind", "download", "127.0.0.1:9", check=False)
        times.append(children_cpu() - before)
    return statistics.median(times)


def _mbit(runs: list[Goodput]) -> str:
    return " ".join(f"{g.bits_per_second / MBIT:.1f}" for g in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each tool per case (medians are compared)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/throughput.py builds network namespaces and needs root", file=sys.stderr)
        return 2
    started = time.monotonic()
    print(f"goodput in Mbit/s over a {WINDOW_SECONDS} s window after the warm-up, {STREAMS} streams, "
          f"{args.runs} runs per tool (medians compared); CPU s/GB = CPU seconds of both ends per GB moved")
    with Lab(PREFIX) as lab:
        startup = _startup_cpu(lab)
    print(f"probe start-up: {startup:.2f} CPU s per run (python, imports, a download refused at once)")
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    for label, rate, loss, delay, directions in CASES:
        for direction in directions:
            with Lab(PREFIX) as lab:  # a fresh link per direction: loss applies to one direction's data only
                bed = build_bed(lab, rate, one_way_delay=delay)
                if loss:
                    lossy(bed, direction, loss)
                ours, theirs = compare(bed, direction, args.runs)
                ratio = median_rate(ours) / median_rate(theirs)
                shaped = rate is not None
                probe_cpu = _client_cpu_per_gb(ours, startup) / _client_cpu_per_gb(theirs)
                if shaped:
                    ratios.append(ratio)
                    cpu_ratios.append(probe_cpu)
                print(f"{label:<32} {direction:<8} ours {median_rate(ours) / MBIT:9.1f} [{_mbit(ours)}]  "
                      f"iperf3 {median_rate(theirs) / MBIT:9.1f} [{_mbit(theirs)}]  "
                      f"{'ratio' if shaped else 'ours/iperf3'} {ratio:.2f}  "
                      f"CPU s/GB both ends ours {_cpu_per_gb(ours):.2f} (w/o start-up {_cpu_per_gb(ours, startup):.2f}) "
                      f"iperf3 {_cpu_per_gb(theirs):.2f}; probe alone w/o start-up {_client_cpu_per_gb(ours, startup):.2f} "
                      f"iperf3 client {_client_cpu_per_gb(theirs):.2f} ({probe_cpu:.2f}x)", flush=True)
    worst, worst_cpu = min(ratios), max(cpu_ratios)
    goodput_ok, cpu_ok = worst >= 0.95, worst_cpu <= CPU_CEILING
    print(f"target: goodput, worst ours/iperf3 of {len(ratios)} shaped cases {worst:.2f} (needs >= 0.95) "
          f"{'PASS' if goodput_ok else 'MISS'}")
    print(f"target: probe CPU per GB (start-up excluded, {startup:.2f} CPU s apart), worst ours/iperf3 client "
          f"{worst_cpu:.2f} (needs <= {CPU_CEILING}) {'PASS' if cpu_ok else 'MISS'}")
    print(f"summary: {len(ratios)} shaped cases, goodput {'PASS' if goodput_ok else 'MISS'}, probe CPU per GB "
          f"{'PASS' if cpu_ok else 'MISS'}, {time.monotonic() - started:.0f} s")
    # the exit status is the goodput's, the accuracy this bench guards; the CPU target is read in its line
    return 0 if goodput_ok else 1


if __name__ == "__main__":
    sys.exit(main())
