#!/usr/bin/env python3
"""/metrics render benchmark: the collector's own writer (collector/exposition.py) against
prometheus_client's generate_latest, on the same state, in the same run.

The state is what a shard's collector holds: for each city, its three probes' latest results of every
test the shipped plan gives them (configs/plan.yaml with a generated table of cities, results shaped as
bench/fleet.py draws them). Both render the whole exposition; the bytes must be equal. CPU time of the
median of 5 renders each, interleaved.

    .venv/bin/python bench/exposition.py [--cities 50,250]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fleet  # noqa: E402 - the fleet bench's plan and result shapes

from qiancheng.collector.exposition import render_series  # noqa: E402
from qiancheng.collector.live import LiveState  # noqa: E402
from qiancheng.collector.metrics import build_registry, new_live_state  # noqa: E402
from qiancheng.collector.plan.load import load_plan  # noqa: E402
from qiancheng.collector.plan.model import Member  # noqa: E402
from qiancheng.core.result import Result  # noqa: E402
from qiancheng.probes.plan_client import plan_jobs  # noqa: E402

T0 = 1_800_000_000_000_000_000
RENDERS = 5


def shard_state(cities: int, workdir: Path) -> LiveState:
    names = fleet.city_names(cities)
    fleet.write_plan(workdir / "plan.yaml", names)
    plan = load_plan(workdir / "plan.yaml", 1000)
    state, shapes, seq = new_live_state(3600), fleet.Shapes(), 0
    for city in names:
        for isp in fleet.ISPS:
            probe = f"{city}-{isp}"
            planned = plan.for_member(Member(probe, city, isp))
            results = []
            for job in plan_jobs(planned, "bench"):
                shape, seq = shapes.pick(job), seq + 1
                results.append(Result(kind=job.kind, target=job.target, start_ns=T0, duration_seconds=shape.duration_seconds,
                                      success=shape.success, error=shape.error, detail=shape.detail, figures=shape.figures,
                                      info=shape.info, samples=shape.samples, seq=seq))  # fmt: skip
            state.apply(probe, city, isp, results, T0)
            state.saw_probe(probe, city, isp, {}, {"spool_backlog": 0.0, "uptime_seconds": 60.0}, T0, "0.1.0", planned.version)
    return state


def cpu(render: Callable[[], bytes]) -> tuple[float, bytes]:
    started = time.process_time()
    body = render()
    return time.process_time() - started, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cities", default="50,250", help="shard sizes, comma-separated (default 50,250)")
    args = parser.parse_args()
    print(f"{'cities':>6} {'samples':>9} {'MB':>6} {'prometheus_client s':>20} {'ours s':>7} {'µs/sample':>10} {'speed-up':>9} same bytes")
    ok = True
    for cities in (int(c) for c in args.cities.split(",")):
        with tempfile.TemporaryDirectory(prefix="qc-exposition-") as workdir:
            state = shard_state(cities, Path(workdir))
        everything = build_registry(state, clock=lambda: T0, process=False)
        rest = build_registry(state, clock=lambda: T0, process=False, series=False)
        theirs, ours = [], []
        for _ in range(RENDERS):
            seconds, expected = cpu(lambda: generate_latest(everything))
            theirs.append(seconds)
            seconds, body = cpu(lambda: render_series(state, T0) + generate_latest(rest))
            ours.append(seconds)
            ok = ok and body == expected
        samples = sum(1 for line in body.splitlines() if not line.startswith(b"#"))
        slow, fast = statistics.median(theirs), statistics.median(ours)
        print(f"{cities:>6} {samples:>9,} {len(body) / 1e6:>6.1f} {slow:>20.2f} {fast:>7.2f} {fast / samples * 1e6:>10.2f} "
              f"{slow / fast:>8.1f}x {'yes' if body == expected else 'NO'}")  # fmt: skip
    print("result:", "PASS" if ok else "FAIL: the two renders differ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
