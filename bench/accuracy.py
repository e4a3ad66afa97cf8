#!/usr/bin/env python3
"""Measurement accuracy benchmark: our error and fping's, against the truth, on the same emulated links in
the same run. Builds the test network itself (network namespaces, the TUN delay relay, nftables loss;
needs root, fping and nft) and measures:

- ICMP round-trip median at 0, 5, 20 and 60 ms of set delay, IPv4 and IPv6, against the relay's log;
- per-packet RTT error (p99) with a CPU hog beside each tool on one CPU;
- loss at 0, 1, 5 and 20 % of 1000 packets, against what nftables dropped;
- duplicates and late replies, against the relay's log;
- IPDV and PDV under uniform and normal delay, against the relay's log.

    .venv/bin/python bench/accuracy.py

The CPU-hog target (ours <= fping's p99) prints PASS or MISS; the last line is a one-line summary.
"""

from __future__ import annotations

import os
import sys

import netlab_env  # noqa: F401 - first: the project's venv, and the tests' network library on sys.path

from tests.netlab.conftest import PREFIX
from tests.netlab.lab import Lab
from tests.netlab.test_icmp_accuracy import measure_delays, measure_under_hog
from tests.netlab.test_jitter_accuracy import ipdv_mean_abs, measure_jitter, pdv_p99, relative_error
from tests.netlab.test_loss_accuracy import COUNT, binomial_interval, measure_impaired, measure_loss


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.3f}"


def _signed_ms(seconds: float) -> str:
    return f"{seconds * 1e3:+8.3f}"


def main() -> int:
    if os.geteuid() != 0:
        print("bench/accuracy.py builds network namespaces and needs root", file=sys.stderr)
        return 2
    with Lab(PREFIX) as lab:
        delays = measure_delays(lab)
        hog = measure_under_hog(lab)
        losses, random_loss = measure_loss(lab)
        impaired = measure_impaired(lab)
        jitter = measure_jitter(lab)

    print("ICMP RTT median, ms (truth: relay log, request read -> reply written; 200 packets 10 ms apart per tool)")
    print("  family  set    truth     ours    fping   ours-truth  fping-truth  ours-fping")
    ours_worst = fping_worst = ours_vs_fping = 0.0
    for run in delays:
        ours_error, fping_error = run.ours_median - run.truth, run.fping_median - run.truth
        ours_worst, fping_worst = max(ours_worst, abs(ours_error)), max(fping_worst, abs(fping_error))
        ours_vs_fping = max(ours_vs_fping, abs(run.ours_median - run.fping_median))
        print(f"  {run.family}  {run.delay * 1e3:4g} {_ms(run.truth)} {_ms(run.ours_median)} {_ms(run.fping_median)}"
              f"    {_signed_ms(ours_error)}     {_signed_ms(fping_error)}    {_signed_ms(run.ours_median - run.fping_median)}")
    ours_hog, fping_hog = hog.p99(hog.ours_errors), hog.p99(hog.fping_errors)
    print("CPU hog (busy coroutines + busy thread in our process; a busy process beside fping; one CPU), 5 ms set delay")
    print(f"  p99 |per-packet error|: ours {_ms(ours_hog)} ms, fping {_ms(fping_hog)} ms "
          f"(our event loop ran {hog.loop_lag * 1e3:.1f} ms late, median)")

    print(f"Loss, {COUNT} packets (truth: packets nftables dropped)")
    print("  set %   95% interval   truth   ours   fping")
    loss_exact = True
    for loss in losses:
        lo, hi = binomial_interval(COUNT, loss.percent / 100)
        ours_lost = int(loss.ours["figures"]["packets_lost"])
        loss_exact &= ours_lost == loss.ours_dropped and loss.fping_lost == loss.fping_dropped
        print(f"  {loss.percent:5g}   [{lo:4d}, {hi:4d}]   {loss.truth_lost:5d}  {ours_lost:5d}  {loss.fping_lost:5d}")
    random_ours = int(random_loss.ours["figures"]["packets_lost"])
    print(f"  nftables numgen random 5 %, both tools on one link: dropped {random_loss.dropped} = "
          f"ours {random_ours} + fping {random_loss.fping_lost}")
    loss_exact &= random_ours + random_loss.fping_lost == random_loss.dropped
    figures = impaired.ours["figures"]
    print("Duplicated (10 %) and late (5 %, held past the timeout) replies, 500 packets: truth / ours")
    print(f"  duplicates {impaired.duplicates} / {figures['duplicates']:g}   late {impaired.late} / {figures['late']:g}"
          f"   lost {impaired.late_requests} / {figures['packets_lost']:g}   received {500 - impaired.late_requests} / "
          f"{figures['packets_received']:g}")

    print("Delay variation, 500 packets (truth: relay log), relative error")
    print("  distribution   IPDV truth ms   ours     fping    PDV p99 truth ms   ours     fping")
    jitter_ours = jitter_fping = 0.0
    for varied in jitter:
        ours_ipdv = relative_error(varied.ours["figures"]["jitter_seconds"], ipdv_mean_abs(varied.truth))
        fping_ipdv = relative_error(ipdv_mean_abs(varied.fping_received), ipdv_mean_abs(varied.fping_truth))
        ours_pdv = relative_error(varied.ours["figures"]["pdv_p99_seconds"], pdv_p99(varied.truth))
        fping_pdv = relative_error(pdv_p99(varied.fping_received), pdv_p99(varied.fping_truth))
        jitter_ours = max(jitter_ours, abs(ours_ipdv), abs(ours_pdv))
        jitter_fping = max(jitter_fping, abs(fping_ipdv), abs(fping_pdv))
        print(f"  {varied.name:12s}   {_ms(ipdv_mean_abs(varied.truth))}     {ours_ipdv:+6.1%}  {fping_ipdv:+6.1%}   "
              f"{_ms(pdv_p99(varied.truth))}          {ours_pdv:+6.1%}  {fping_pdv:+6.1%}")

    hog_ok = ours_hog <= fping_hog
    print(f"target: under the CPU hog, per-packet p99 error ours {ours_hog * 1e3:.3f} ms <= fping's "
          f"{fping_hog * 1e3:.3f} ms {'PASS' if hog_ok else 'MISS'}")
    print(f"summary: ICMP median error max {ours_worst * 1e3:.3f} ms vs fping {fping_worst * 1e3:.3f} ms "
          f"(ours/fping {ours_worst / fping_worst:.2f}, |ours-fping| max {ours_vs_fping * 1e3:.3f} ms); "
          f"hog p99 error {ours_hog * 1e3:.3f} vs {fping_hog * 1e3:.3f} ms (ours/fping {ours_hog / fping_hog:.2f}); "
          f"loss {'exact' if loss_exact else 'NOT exact'} at 0/1/5/20 %; "
          f"IPDV/PDV error max {jitter_ours:.1%} vs fping {jitter_fping:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
