"""The path kind against mtr on the test network's chain (probe - r1 - r2 - r3 - target, 5 ms each way
on the r2-r3 link), both families: per-hop median RTT beside mtr's average and best, and the CPU time
of one 10-round trace beside mtr's (`mtr --report -c 10`), each run `--runs` times, interleaved.

Our CPU is counted two ways: the whole `qiancheng-probe once` process (interpreter and scapy import
included: what a one-shot costs) and the trace alone inside a running agent (what a scheduled trace
costs, after a first one has paid for the imports). mtr's is its process and its mtr-packet helper. Needs root (it builds namespaces).

    .venv/bin/python bench/path.py [--runs 3] [--interval 0.2]
"""

from __future__ import annotations

import netlab_env  # noqa: F401  (the project's venv and the tests' libraries)

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.netlab.chain import Chain, build_chain, mtr_hops
from tests.netlab.lab import Lab
from tests.netlab.relay import RelaySettings

PYTHON = sys.executable

# a trace inside a running interpreter: the CPU of the trace alone, as an agent's scheduled trace costs
IN_PROCESS = """
import asyncio, json, sys, time
from qiancheng.core.kind_settings import PathSettings
from qiancheng.core.result import Target
from qiancheng.core.units import Duration
from qiancheng.probes.measure import run
settings = PathSettings(rounds=10, round_interval=Duration(float(sys.argv[2])), timeout=Duration(1.0))
# an agent's first trace pays for the imports (scapy) and scapy's first dissections: one before the clock
asyncio.run(run("path", Target(name="t", address=sys.argv[1]), PathSettings(rounds=1, timeout=Duration(1.0))))
started = time.process_time()
result = asyncio.run(run("path", Target(name="t", address=sys.argv[1]), settings))
print(json.dumps({"cpu": time.process_time() - started, "success": result.success}))
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(argv: list[str]) -> tuple[float, str]:
    """(CPU seconds of the command and its children, its stdout)."""
    before = _children_cpu()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    return _children_cpu() - before, done.stdout


def _ours(chain: Chain, address: str, interval: float) -> tuple[float, dict[str, object]]:
    cpu, out = _timed(["ip", "netns", "exec", chain.probe.name, PYTHON, "-m", "qiancheng.probes.cli", "once", "--json",
                       "--kind", "path", "--rounds", "10", "--round-interval", f"{interval}s", "--timeout", "1s", address])
    return cpu, json.loads(out)


def _trace_only(chain: Chain, address: str, interval: float) -> float:
    _, out = _timed(["ip", "netns", "exec", chain.probe.name, PYTHON, "-c", IN_PROCESS, address, str(interval)])
    found = json.loads(out)
    assert found["success"], found
    return float(found["cpu"])


def _mtr(chain: Chain, address: str, interval: float, family: str) -> float:
    cpu, _ = _timed(["ip", "netns", "exec", chain.probe.name, "mtr", "--report", "--json", "--no-dns", "-c", "10",
                     "-i", f"{interval:g}", "--timeout", "1", "-6" if family == "ipv6" else "-4", address])
    return cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between rounds (mtr -i)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/path.py needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="qc-bench-path-") as workdir, Lab("qbp", Path(workdir)) as lab:
        chain = build_chain(lab, delay_r2_r3=RelaySettings(delay=0.005))
        for family in ("ipv4", "ipv6"):
            address = chain.target_address(family)
            ours_cpu, trace_cpu, mtr_cpu = [], [], []
            result: dict[str, object] = {}
            for _ in range(args.runs):
                cpu, result = _ours(chain, address, args.interval)
                ours_cpu.append(cpu)
                trace_cpu.append(_trace_only(chain, address, args.interval))
                mtr_cpu.append(_mtr(chain, address, args.interval, family))
            peer = mtr_hops(chain.probe, address, "icmp", cycles=10, interval=args.interval, family=family)
            hops = result["hops"]
            assert isinstance(hops, list)
            print(f"\n{family}: the chain, 5 ms each way after hop 2; 10 rounds every {args.interval:g} s")
            print(f"  {'hop':>3} {'address':<16} {'ours median ms':>14} {'best':>7} {'mtr avg ms':>10} {'best':>7} {'same host':>9}")
            for hop, theirs in zip(hops, peer):
                ours_median = hop["rtt_median_seconds"] * 1e3
                same = "yes" if hop.get("address") == theirs.address else "NO"
                print(f"  {hop['ttl']:>3} {hop.get('address', '???'):<16} {ours_median:>14.3f} "
                      f"{hop['rtt_min_seconds'] * 1e3:>7.3f} {(theirs.average or 0) * 1e3:>10.3f} "
                      f"{(theirs.best or 0) * 1e3:>7.3f} {same:>9}")
            if len(hops) != len(peer):
                print(f"  MISS: {len(hops)} hops, mtr {len(peer)}")
            ours_median_cpu, trace_median_cpu, mtr_median_cpu = (statistics.median(v) for v in (ours_cpu, trace_cpu, mtr_cpu))
            print(f"  CPU of one 10-round trace (median of {args.runs}): mtr {mtr_median_cpu * 1e3:.1f} ms; "
                  f"ours as `once` {ours_median_cpu * 1e3:.1f} ms ({ours_median_cpu / mtr_median_cpu:.1f}x, start-up "
                  f"and scapy import included), the trace alone {trace_median_cpu * 1e3:.1f} ms "
                  f"({trace_median_cpu / mtr_median_cpu:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
