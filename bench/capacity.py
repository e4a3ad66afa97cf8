#!/usr/bin/env python3
"""Capacity benchmark: the capacity kind (RFC 9097 by RFC 9946) on a tbf-shaped link, both directions,
beside the TCP download kind on the same link: what each finds, and the probe's CPU seconds per GB moved.

The tests' network (tests/netlab): a client and a server namespace over a veth shaped by tbf to each
rate asked (default 1 Gbit/s), the responder in the server namespace with its RFC 9946 server and its
HTTP download. Each direction runs `qiancheng-probe once --kind capacity --duration 10s` in the client
namespace; the probe's CPU is that of the process (start-up included, from its rusage), and the bytes
it moved are the IP-layer bytes of its sub-intervals. The truth at the IP layer is the link's rate times
packet / frame bytes (tbf counts frames from the Ethernet header on). Needs root.

    sudo .venv/bin/python bench/capacity.py [--rates 1000] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import netlab_env  # noqa: F401 - first: the project's venv, and the tests' network library on sys.path

from tests.conftest import PYTHON
from tests.netlab.lab import Lab, Netns
from tests.netlab.test_capacity_accuracy import HTTP_PORT, UDPST_PORT, build_bed

MBIT = 1_000_000


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def once(client: Netns, *args: str) -> tuple[dict[str, object], float]:
    """A `once --json` result and the CPU seconds the probe took for it."""
    before = children_cpu()
    done = client.run(PYTHON, "-m", "qiancheng.probes.cli", "once", "--json", *args, timeout=120)
    return json.loads(done.stdout), children_cpu() - before


def truth(rate_bit: int, figures: dict[str, float]) -> float:
    size = figures["capacity_bits_per_second"] * figures["sub_interval_seconds"] / 8 / figures["datagrams"]
    fragments = max(1, math.ceil((size - 20) / 1480))
    return rate_bit * size / (size + 14 + (fragments - 1) * 34)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rates", default="1000", help="shaped rates, Mbit/s, comma-separated (default 1000)")
    args = parser.parse_args()
    started = time.monotonic()
    worst = 0.0
    print("link      direction  truth (IP)  ours (IP)  ours/truth  ethernet   probe CPU s/GB   | TCP download  CPU s/GB")
    for rate_mbit in (int(r) for r in args.rates.split(",")):
        rate_bit = rate_mbit * MBIT
        with tempfile.TemporaryDirectory(prefix="qiancheng-bench-") as tmp, Lab("qb", workdir=Path(tmp) / "lab") as lab:
            bed = build_bed(lab, rate_bit)
            tcp, tcp_cpu = once(bed.client, "--kind", "download", "--duration", "10s",
                                f"http://{bed.address}:{HTTP_PORT}/download")  # fmt: skip
            tcp_figures = tcp["figures"]
            assert isinstance(tcp_figures, dict)
            tcp_gb = float(tcp_figures["bytes"]) / 1e9
            for direction in ("download", "upload"):
                result, cpu = once(bed.client, "--kind", "capacity", "--direction", direction, "--duration", "10s",
                                   f"{bed.address}:{UDPST_PORT}")  # fmt: skip
                figures = result["figures"]
                samples = result["samples"]
                assert isinstance(figures, dict) and isinstance(samples, list), result
                moved_gb = sum(samples) * float(figures["sub_interval_seconds"]) / 8 / 1e9
                expected = truth(rate_bit, figures)
                ours = float(figures["capacity_bits_per_second"])
                worst = max(worst, abs(ours / expected - 1))
                print(f"{rate_mbit:5d} Mb/s {direction:9s} {expected / MBIT:9.1f}  {ours / MBIT:9.1f}  {ours / expected:9.3f}  "
                      f"{float(figures['capacity_ethernet_bits_per_second']) / MBIT:8.1f}  {cpu / moved_gb:8.2f} "
                      f"({cpu:.2f} s, {moved_gb:.2f} GB) | {float(tcp_figures['throughput_bits_per_second']) / MBIT:8.1f} "
                      f"{tcp_cpu / tcp_gb:8.2f}", flush=True)  # fmt: skip
    verdict = "PASS" if worst <= 0.02 else "MISS"
    print(f"target: capacity within 2 % of the shaped link's IP-layer truth, worst {worst * 100:.2f} % {verdict}")
    print(f"summary: capacity {verdict}, {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
