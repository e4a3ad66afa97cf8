#!/usr/bin/env python3
"""Fault counts: three probes push continuously on loopback while the collector is SIGKILLed and
restarted on its store at random moments and probes are SIGKILLed mid-upload and restarted; then every
probe's results are counted by `seq` against its own spool (tests/integration/chaos.py keeps the books).

    .venv/bin/python bench/fault_counts.py [--collector-kills 10] [--probe-kills 3] [--runs 1] [--seed N]

Prints each probe's books, then per run a line `kills: ... results measured N, stored N, lost 0,
duplicated 0`; the last line sums the runs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import netlab_env  # noqa: F401 - first: the project's venv, and the tests' libraries on sys.path

from tests.conftest import Processes
from tests.integration import chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collector-kills", type=int, default=10)
    parser.add_argument("--probe-kills", type=int, default=3)
    parser.add_argument("--probes", type=int, default=3)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    totals = {"collector": 0, "probe": 0, "measured": 0, "stored": 0, "lost": 0, "duplicated": 0}
    for run in range(args.runs):
        workdir = Path(tempfile.mkdtemp(prefix="qiancheng-faults-"))
        processes = Processes(workdir)
        try:
            counts = chaos.run(processes, workdir, probes=args.probes, collector_kills=args.collector_kills,
                               probe_kills=args.probe_kills, seed=args.seed + run)  # fmt: skip
        finally:
            processes.stop_all()
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"run {run + 1}:")
        print("\n".join(counts.lines()), flush=True)
        totals["collector"] += counts.collector_kills
        totals["probe"] += counts.probe_kills
        totals["measured"] += sum(p.measured for p in counts.probes)
        totals["stored"] += sum(p.stored for p in counts.probes)
        totals["lost"] += counts.lost
        totals["duplicated"] += counts.duplicated
    print(f"summary: {args.runs} runs, kills collector {totals['collector']} probes {totals['probe']}; results measured "
          f"{totals['measured']}, stored {totals['stored']}, lost {totals['lost']}, duplicated {totals['duplicated']}")
    return 0 if totals["lost"] == 0 and totals["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
