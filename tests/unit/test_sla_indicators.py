"""Each SLA indicator on hand-computed sample sets, and objectives exactly at their thresholds."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from qiancheng.collector.sla.indicators import INDICATORS
from qiancheng.collector.sla.profiles import Objective, parse_threshold
from qiancheng.collector.store import WindowRow


def row(samples: Sequence[float | None] = (), success: bool = True, **figures: float) -> WindowRow:
    return WindowRow(start_ns=0, success=success, figures=dict(figures), samples=list(samples))


def value(name: str, rows: list[WindowRow]) -> float | None:
    return INDICATORS[name].compute(rows)


def test_rtt_p95_is_exact_over_every_sample_of_the_window() -> None:
    # 1..20 ms over two tests: rank (20-1)*0.95 = 18.05 → 19 + 0.05 * (20-19) = 19.05 ms
    rows = [row([i / 1000 for i in range(1, 11)]), row([i / 1000 for i in range(11, 21)] + [None])]
    assert value("rtt_p95", rows) == pytest.approx(0.01905)
    assert value("rtt_median", rows) == pytest.approx(0.0105)


def test_rtt_needs_a_received_sample() -> None:
    assert value("rtt_p95", []) is None
    assert value("rtt_p95", [row([None, None], success=False)]) is None


def test_jitter_pairs_consecutive_packets_within_each_test_only() -> None:
    # test 1: |12-10| + |11-12| = 3 over 2 pairs; test 2: 10, lost, 30 has no pair; test 3: |25-20| = 5
    rows = [row([0.010, 0.012, 0.011]), row([0.010, None, 0.030]), row([0.020, 0.025])]
    assert value("jitter", rows) == pytest.approx((0.002 + 0.001 + 0.005) / 3)
    assert value("jitter", [row([0.010])]) is None


def test_pdv_is_p99_of_delay_above_the_window_minimum() -> None:
    samples = [0.010 + i / 1000 for i in range(101)]  # 10..110 ms: PDV values 0..100 ms, p99 = 99 ms
    assert value("pdv", [row(samples[:50]), row(samples[50:])]) == pytest.approx(0.099)


def test_loss_sums_counters_over_tests_and_falls_back_to_samples() -> None:
    rows = [row(packets_sent=10, packets_received=10), row(packets_sent=10, packets_received=7),
            row([0.01, None, None, 0.01])]  # fmt: skip
    assert value("loss", rows) == pytest.approx(1 - 19 / 24)
    assert value("loss", [row(success=False)]) is None  # nothing sent: no data, not 0 % and not 100 %


def test_availability_counts_tests_of_any_kind() -> None:
    rows = [row(success=True)] * 3 + [row(success=False)]
    assert value("availability", rows) == 0.75
    assert value("availability", []) is None


def test_throughput_is_the_median_of_successful_tests_and_absent_without_them() -> None:
    rows = [row(throughput_bits_per_second=4e8), row(throughput_bits_per_second=6e8),
            row(throughput_bits_per_second=5e8), row(success=False, throughput_bits_per_second=1.0)]  # fmt: skip
    assert value("download", rows) == 5e8
    assert value("upload", rows[:2]) == 5e8  # an even count: the mean of the two middle values
    assert value("download", [row(success=False)]) is None
    assert value("mos", [row(mos=4.1), row(mos=3.9), row()]) == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("indicator", "threshold", "inside", "outside"),
    [
        ("rtt_p95", 0.010, 0.010, 0.0100001),
        ("jitter", 0.010, 0.010, 0.0101),
        ("pdv", 0.050, 0.050, 0.0501),
        ("loss", 0.001, 0.001, 0.0011),
        ("availability", 0.999, 0.999, 0.9989),
        ("download", 5e8, 5e8, 4.99e8),
        ("mos", 4.0, 4.0, 3.99),
    ],
)
def test_a_value_exactly_at_the_threshold_meets_it(indicator: str, threshold: float, inside: float, outside: float) -> None:
    objective = Objective(name=indicator, indicator=INDICATORS[indicator], threshold=threshold)
    assert objective.met(inside)
    assert not objective.met(outside)


def test_boundary_from_samples_rtt_p95_exactly_10ms() -> None:
    # twenty samples, the top one 10 ms and the rest 10 ms too: p95 is exactly 10 ms and meets 10 ms
    objective = Objective("rtt_p95", INDICATORS["rtt_p95"], 0.010)
    at = value("rtt_p95", [row([0.010] * 20)])
    assert at == 0.010 and objective.met(at)
    above = value("rtt_p95", [row([0.010] * 18 + [0.011, 0.011])])
    assert above is not None and not objective.met(above)


def test_boundary_from_counters_loss_exactly_one_per_thousand() -> None:
    objective = Objective("loss", INDICATORS["loss"], 0.001)
    at = value("loss", [row(packets_sent=1000, packets_received=999)])
    assert at is not None and objective.met(at)
    above = value("loss", [row(packets_sent=1000, packets_received=998)])
    assert above is not None and not objective.met(above)


def test_boundary_from_tests_availability_exactly_999_of_1000() -> None:
    objective = Objective("availability", INDICATORS["availability"], parse_threshold(INDICATORS["availability"], "99.9%"))
    at = value("availability", [row()] * 999 + [row(success=False)])
    assert at is not None and objective.met(at)
    below = value("availability", [row()] * 998 + [row(success=False)] * 2)
    assert below is not None and not objective.met(below)
