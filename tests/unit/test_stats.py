"""Train statistics on hand-computed sample sets: percentiles, IPDV, loss accounting, and ping's summary."""

from __future__ import annotations

import math
import statistics
from fractions import Fraction

import pytest

from qiancheng.core.result import is_figure_name
from qiancheng.core.stats import TrainStats, ipdv, mean_abs_ipdv, median, percentile, train_figures, train_stats

ms = 1e-3

ALWAYS = {"packets_sent", "packets_received", "packets_lost", "duplicates", "late", "loss_ratio"}
WHEN_RECEIVED = {
    "rtt_min_seconds", "rtt_mean_seconds", "rtt_median_seconds", "rtt_p95_seconds", "rtt_max_seconds",
    "rtt_stddev_seconds", "jitter_seconds", "pdv_p99_seconds",
}  # fmt: skip


# --- percentile and median: linear interpolation between closest ranks, rank = (n - 1) * q / 100


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0, 1.0, 3.0], 50, 3.0),  # odd count: the middle value, whatever the input order
        ([5.0, 1.0, 3.0], 25, 2.0),  # rank 0.5: halfway between 1 and 3
        ([4.0, 1.0, 3.0, 2.0], 50, 2.5),  # even count: rank 1.5, mean of the two middle values
        ([10.0, 20.0, 30.0, 40.0, 50.0], 90, 46.0),  # rank 3.6: 40 + 0.6 * (50 - 40)
        ([10.0, 20.0, 30.0, 40.0, 50.0], 0, 10.0),  # q=0 is the minimum
        ([10.0, 20.0, 30.0, 40.0, 50.0], 100, 50.0),  # q=100 is the maximum
        ([7.0], 0, 7.0),  # a single value is every percentile
        ([7.0], 50, 7.0),
        ([7.0], 99, 7.0),
        ([7.0], 100, 7.0),
        ([2.0, 2.0, 2.0, 9.0], 50, 2.0),  # ties
    ],
)
def test_percentile_of_known_sets(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected, abs=1e-12)


def test_percentile_does_not_reorder_its_input() -> None:
    values = [3.0, 1.0, 2.0]
    percentile(values, 50)
    assert values == [3.0, 1.0, 2.0]


@pytest.mark.parametrize(("values", "expected"), [([3.0, 1.0, 2.0], 2.0), ([1.0, 4.0, 2.0, 3.0], 2.5), ([0.25], 0.25)])
def test_median_of_odd_even_and_single_sets(values: list[float], expected: float) -> None:
    assert median(values) == expected


@pytest.mark.parametrize(
    ("values", "q", "message"),
    [
        ([], 50, "percentile of no values"),
        ([1.0, 2.0], -0.001, "within 0..100, got -0.001"),
        ([1.0, 2.0], 100.5, "within 0..100, got 100.5"),
    ],
)
def test_percentile_refuses_no_values_and_q_outside_0_to_100(values: list[float], q: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        percentile(values, q)


def test_median_of_no_values_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        median([])


# --- IPDV (RFC 3393): consecutive packets by sequence; a lost packet breaks both pairs it belongs to


def test_ipdv_of_consecutive_received_packets() -> None:
    assert ipdv([10 * ms, 12 * ms, 11 * ms, 15 * ms]) == pytest.approx([2 * ms, -1 * ms, 4 * ms])


def test_a_lost_packet_breaks_pairs_rather_than_being_skipped() -> None:
    samples = [10 * ms, 12 * ms, None, 11 * ms, 15 * ms, 13 * ms]
    # pairs (1,2) and (4,5), (5,6); not (2,4), which are not consecutive
    assert ipdv(samples) == pytest.approx([2 * ms, 4 * ms, -2 * ms])
    assert mean_abs_ipdv(samples) == pytest.approx((2 + 4 + 2) * ms / 3)


@pytest.mark.parametrize("samples", [[], [10 * ms], [None, None], [10 * ms, None, 20 * ms], [None, 10 * ms, None]])
def test_no_consecutive_pair_means_no_ipdv_and_no_jitter(samples: list[float | None]) -> None:
    assert ipdv(samples) == []
    assert mean_abs_ipdv(samples) is None


def test_mean_abs_ipdv_counts_falls_as_much_as_rises() -> None:
    # +5, -5, +5: mean absolute 5 ms, although the mean IPDV is 5/3 ms
    assert mean_abs_ipdv([10 * ms, 15 * ms, 10 * ms, 15 * ms]) == pytest.approx(5 * ms)


# --- train_stats


def test_a_known_train() -> None:
    # 2, 4, 4, 4, 5, 5, 7, 9 ms: mean 5, population variance 32/8 = 4, so stddev 2 ms (sample stddev: 2.138)
    samples: list[float | None] = [2 * ms, 4 * ms, 4 * ms, 4 * ms, 5 * ms, 5 * ms, 7 * ms, 9 * ms]
    stats = train_stats(samples)
    assert (stats.sent, stats.received, stats.lost, stats.duplicates, stats.late) == (8, 8, 0, 0, 0)
    assert stats.loss_ratio == 0.0
    assert stats.rtt_min == pytest.approx(2 * ms)
    assert stats.rtt_max == pytest.approx(9 * ms)
    assert stats.rtt_mean == pytest.approx(5 * ms)
    assert stats.rtt_median == pytest.approx(4.5 * ms)  # rank 3.5: (4 + 5) / 2
    assert stats.rtt_p95 == pytest.approx(8.3 * ms)  # rank 6.65: 7 + 0.65 * (9 - 7)
    assert stats.rtt_stddev == pytest.approx(2 * ms)
    # |+2| + 0 + 0 + |+1| + 0 + |+2| + |+2| = 7 ms over 7 pairs
    assert stats.jitter == pytest.approx(1 * ms)
    # delays above the minimum: 0, 2, 2, 2, 3, 3, 5, 7 ms; rank 6.93: 5 + 0.93 * (7 - 5)
    assert stats.pdv_p99 == pytest.approx(6.86 * ms)


def test_stddev_is_the_population_one() -> None:
    samples = [2 * ms, 4 * ms, 4 * ms, 4 * ms, 5 * ms, 5 * ms, 7 * ms, 9 * ms]
    stddev = train_stats(list(samples)).rtt_stddev
    assert stddev == pytest.approx(statistics.pstdev(samples))
    assert stddev != pytest.approx(statistics.stdev(samples))


def test_all_lost() -> None:
    stats = train_stats([None] * 5)
    assert (stats.sent, stats.received, stats.lost) == (5, 0, 5)
    assert stats.loss_ratio == 1.0
    assert stats == TrainStats(5, 0, 0, 0, None, None, None, None, None, None, None, None)


def test_an_empty_train_has_no_loss_rather_than_a_division_by_zero() -> None:
    stats = train_stats([])
    assert (stats.sent, stats.lost, stats.loss_ratio) == (0, 0, 0.0)


def test_one_received_packet() -> None:
    stats = train_stats([None, 20 * ms, None])
    assert (stats.sent, stats.received, stats.lost) == (3, 1, 2)
    assert stats.loss_ratio == pytest.approx(2 / 3)
    one = (stats.rtt_min, stats.rtt_mean, stats.rtt_median, stats.rtt_p95, stats.rtt_max)
    assert one == (20 * ms,) * 5
    assert stats.rtt_stddev == 0.0
    assert stats.pdv_p99 == 0.0
    assert stats.jitter is None  # no consecutive pair arrived


def test_duplicates_and_late_replies_are_counted_apart_and_do_not_change_loss() -> None:
    samples: list[float | None] = [10 * ms, None, 30 * ms, 20 * ms]
    plain = train_stats(samples)
    noisy = train_stats(samples, duplicates=2, late=1)
    assert (noisy.duplicates, noisy.late) == (2, 1)
    assert (noisy.sent, noisy.received, noisy.lost) == (4, 3, 1)
    assert noisy.loss_ratio == plain.loss_ratio == 0.25
    # nor the delay figures: a duplicate or late reply carries no sample
    assert (noisy.rtt_mean, noisy.rtt_stddev, noisy.jitter) == (plain.rtt_mean, plain.rtt_stddev, plain.jitter)


def test_late_replies_to_an_all_lost_train_leave_it_all_lost() -> None:
    stats = train_stats([None, None], late=2)
    assert (stats.received, stats.lost, stats.loss_ratio, stats.late) == (0, 2, 1.0, 2)


# --- figures


def test_figures_of_a_train_with_replies() -> None:
    figures = train_stats([10 * ms, None, 30 * ms, 20 * ms], duplicates=1).figures()
    assert set(figures) == ALWAYS | WHEN_RECEIVED
    assert all(is_figure_name(name) for name in figures)  # they must pass the wire format
    assert all(type(value) is float for value in figures.values())
    assert figures["packets_sent"] == 4.0
    assert figures["packets_received"] == 3.0
    assert figures["packets_lost"] == 1.0
    assert figures["duplicates"] == 1.0
    assert figures["loss_ratio"] == 0.25
    assert figures["rtt_median_seconds"] == pytest.approx(20 * ms)
    assert figures["jitter_seconds"] == pytest.approx(10 * ms)  # only the pair (30, 20) arrived


def test_figures_of_an_all_lost_train_have_no_delay_figures() -> None:
    figures = train_stats([None] * 3, late=1).figures()
    assert figures == {
        "packets_sent": 3.0, "packets_received": 0.0, "packets_lost": 3.0, "duplicates": 0.0, "late": 1.0,
        "loss_ratio": 1.0,
    }  # fmt: skip


def test_figures_leave_out_jitter_when_no_pair_arrived() -> None:
    figures = train_stats([10 * ms, None, 30 * ms]).figures()
    assert set(figures) == ALWAYS | WHEN_RECEIVED - {"jitter_seconds"}


# --- against ping's summary line


def ping_summary(sent: int, rtts_us: list[int]) -> str:
    """The two summary lines iputils ping prints, by its own arithmetic (ping_common.c, finish()).

    Times are whole microseconds; mean and mdev are integer divisions and an integer square root, so ping
    truncates each figure to the microsecond. mdev = sqrt(mean(rtt^2) - mean(rtt)^2), the population stddev.
    """
    received = len(rtts_us)
    mean = sum(rtts_us) // received
    mean_of_squares = sum(t * t for t in rtts_us) // received
    mdev = math.isqrt(mean_of_squares - mean * mean)
    loss_percent = (sent - received) * 100 // sent
    shown = "/".join(f"{t // 1000}.{t % 1000:03d}" for t in (min(rtts_us), mean, max(rtts_us), mdev))
    return f"{sent} packets transmitted, {received} received, {loss_percent}% packet loss\nrtt min/avg/max/mdev = {shown} ms"


def our_summary(stats: TrainStats) -> str:
    """Our figures printed as ping prints its own, truncated to the microsecond."""
    assert stats.rtt_min is not None and stats.rtt_mean is not None
    assert stats.rtt_max is not None and stats.rtt_stddev is not None
    figures_us = [math.floor(v * 1e6 + 1e-6) for v in (stats.rtt_min, stats.rtt_mean, stats.rtt_max, stats.rtt_stddev)]
    shown = "/".join(f"{t // 1000}.{t % 1000:03d}" for t in figures_us)
    loss_percent = math.floor(stats.loss_ratio * 100 + 1e-9)
    return (
        f"{stats.sent} packets transmitted, {stats.received} received, {loss_percent}% packet loss\n"
        f"rtt min/avg/max/mdev = {shown} ms"
    )


def test_ping_summary_of_a_known_set_by_hand() -> None:
    # 10, 12, 11, 15 ms and one lost: mean 12, mean of squares 590/4 = 147.5, variance 3.5, mdev 1.8708 ms,
    # which ping truncates to 1.870
    assert ping_summary(5, [10_000, 12_000, 11_000, 15_000]) == (
        "5 packets transmitted, 4 received, 20% packet loss\nrtt min/avg/max/mdev = 10.000/12.000/15.000/1.870 ms"
    )
    stats = train_stats([10 * ms, 12 * ms, None, 11 * ms, 15 * ms])
    assert stats.loss_ratio == pytest.approx(0.20)
    assert stats.rtt_stddev == pytest.approx(math.sqrt(3.5) * ms)


@pytest.mark.parametrize(
    "rtts_us",
    [
        [10_000, 12_000, None, 11_000, 15_000],
        [412, 388, 405, 1_730, None, 399, None, 401, 396, 413],  # loopback-like: one outlier, two lost
        [23_456, 23_789, 24_102, 23_321, 29_870, 23_555, 23_600, 23_444, 23_512, 23_491],
    ],
)
def test_our_figures_print_as_pings_summary(rtts_us: list[int | None]) -> None:
    # each set's mean is a whole number of microseconds, where ping's integer arithmetic is exact but for
    # the final truncation (see the next test for the other case)
    received = [t for t in rtts_us if t is not None]
    assert sum(received) % len(received) == 0
    stats = train_stats([None if t is None else t / 1e6 for t in rtts_us])
    assert our_summary(stats) == ping_summary(len(rtts_us), received)


def test_ping_inflates_mdev_when_the_mean_is_not_a_whole_microsecond() -> None:
    # mean 24214.7 us: ping squares the truncated mean 24214, so its variance is larger by about
    # 2 * 24214 * 0.7 us^2 and its mdev by about 24214 * 0.7 / 1896 = 9 us; ours is the exact population stddev
    rtts_us = [23_456, 23_789, 24_102, 23_321, 29_870, 23_555, 23_600, 23_444, 23_512, 23_498]
    assert ping_summary(10, rtts_us).endswith("/1.905 ms")
    n, total, squares = len(rtts_us), sum(rtts_us), sum(t * t for t in rtts_us)
    exact_us = math.sqrt(Fraction(squares, n) - Fraction(total, n) ** 2)  # 1896.448 us
    stats = train_stats([t / 1e6 for t in rtts_us])
    assert stats.rtt_stddev == pytest.approx(exact_us / 1e6, rel=1e-9)
    assert our_summary(stats).endswith("/1.896 ms")


@pytest.mark.parametrize(
    "samples",
    [[0.000043], [None], [0.0], [1e-9], [None, 0.002], [0.002, None, 0.004], [0.001, 0.002, 0.0015, None, 0.003]],
)
def test_train_figures_are_the_statistics_figures_in_the_same_order(samples: list[float | None]) -> None:
    figures = train_figures(samples, duplicates=2, late=1)
    expected = train_stats(samples, duplicates=2, late=1).figures()
    assert figures == expected and list(figures) == list(expected)


def test_one_sample_statistics_are_the_sample_itself() -> None:
    stats = train_stats([None, 0.0123, None])
    assert (stats.sent, stats.received, stats.loss_ratio) == (3, 1, 2 / 3)
    assert stats.rtt_min == stats.rtt_mean == stats.rtt_median == stats.rtt_p95 == stats.rtt_max == 0.0123
    assert (stats.rtt_stddev, stats.jitter, stats.pdv_p99) == (0.0, None, 0.0)
