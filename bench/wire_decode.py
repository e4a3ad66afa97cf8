#!/usr/bin/env python3
"""Wire decoding benchmark: µs per result to parse *and validate* a batch, against the standard library's
`json.loads`, which only parses (no types, no bounds, no key checks), measured in the same run.

The batch is what a probe sends: 500 ICMP results with 10 samples, 14 figures and 4 info keys each.

    .venv/bin/python bench/wire_decode.py [--results 500] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import timeit

from qiancheng.core.result import Result, Target
from qiancheng.core.stats import train_stats
from qiancheng.core.wire import Batch, decode_batch, encode_batch


def _batch(results: int) -> bytes:
    samples: list[float | None] = [0.0021 + i * 1e-5 for i in range(9)] + [None]
    figures = train_stats(samples).figures()
    info = {"address": "198.18.0.2", "socket": "raw", "size_bytes": "56", "send_timestamps": "kernel"}
    return encode_batch(Batch(
        probe_id="lishui-01", batch_id="0123456789abcdef", city="lishui", isp="isp-a",
        results=[Result(kind="icmp", target=Target(name=f"edge-{i % 50}", address="198.18.0.2"),
                        start_ns=1_795_000_000_000_000_000 + i, duration_seconds=1.0, success=True,
                        figures=figures, info=info, samples=samples, seq=i + 1) for i in range(results)],
    ))  # fmt: skip


def _best_us_per_result(function: object, body: bytes, results: int, repeat: int) -> float:
    timer = timeit.Timer(lambda: function(body))  # type: ignore[operator]
    loops, _ = timer.autorange()
    return min(timer.repeat(repeat, loops)) / loops / results * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    body = _batch(args.results)
    assert len(decode_batch(body).results) == args.results
    ours = _best_us_per_result(decode_batch, body, args.results, args.repeat)
    peer = _best_us_per_result(json.loads, body, args.results, args.repeat)
    print(f"batch of {args.results} icmp results, {len(body) / 1024:.0f} KiB JSON; best of {args.repeat}")
    print(f"  decode_batch (parse + validate)  {ours:6.2f} µs/result")
    print(f"  json.loads   (parse only)        {peer:6.2f} µs/result")
    print(f"summary: validated decoding takes {ours / peer:.2f}× the time of json.loads; {1e6 / ours:,.0f} results/s on one core")


if __name__ == "__main__":
    main()
