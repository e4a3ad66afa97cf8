"""Statistics of a packet train, following the IETF IPPM definitions; pure functions over plain data.

- round-trip delay: RFC 2681, one sample per packet whose reply arrived within the timeout;
- loss: RFC 7680 / RFC 6673, a packet counts as lost only if no reply arrived within the timeout;
  duplicates and late replies (after the timeout) are counted apart and never change loss;
- jitter: RFC 3393 IPDV between consecutive packets that both arrived, reported as the mean of the
  absolute differences (the figure ping-style tools call jitter);
- PDV: RFC 5481, the 99th percentile of each delay minus the minimum delay.
All times are in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["TrainStats", "train_stats", "train_figures", "percentile", "median", "ipdv", "mean_abs_ipdv"]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of `values` by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """The median of `values` (mean of the two middle values for an even count)."""
    return percentile(values, 50)


def ipdv(samples: Sequence[float | None]) -> list[float]:
    """RFC 3393 IPDV: delay differences of consecutive packets (by sequence) that both arrived."""
    return [b - a for a, b in zip(samples, samples[1:]) if a is not None and b is not None]


def mean_abs_ipdv(samples: Sequence[float | None]) -> float | None:
    """Mean absolute IPDV of consecutive received packets, or None when no pair arrived."""
    differences = ipdv(samples)
    return sum(abs(d) for d in differences) / len(differences) if differences else None


@dataclass(frozen=True, slots=True)
class TrainStats:
    """Summary of one train: counts, loss, and round-trip statistics of the received packets."""

    sent: int
    received: int
    duplicates: int
    late: int
    rtt_min: float | None
    rtt_mean: float | None
    rtt_median: float | None
    rtt_p95: float | None
    rtt_max: float | None
    rtt_stddev: float | None
    jitter: float | None
    pdv_p99: float | None

    @property
    def lost(self) -> int:
        return self.sent - self.received

    @property
    def loss_ratio(self) -> float:
        return self.lost / self.sent if self.sent else 0.0

    def figures(self) -> dict[str, float]:
        """The statistics as result figures, under the names the collector and docs/metrics.md use."""
        figures: dict[str, float] = {
            "packets_sent": float(self.sent),
            "packets_received": float(self.received),
            "packets_lost": float(self.sent - self.received),
            "duplicates": float(self.duplicates),
            "late": float(self.late),
            "loss_ratio": self.loss_ratio,
        }
        # One figure a line rather than a loop over a second dict: built for every result, a thousand a second.
        if self.rtt_min is not None:
            figures["rtt_min_seconds"] = self.rtt_min
        if self.rtt_mean is not None:
            figures["rtt_mean_seconds"] = self.rtt_mean
        if self.rtt_median is not None:
            figures["rtt_median_seconds"] = self.rtt_median
        if self.rtt_p95 is not None:
            figures["rtt_p95_seconds"] = self.rtt_p95
        if self.rtt_max is not None:
            figures["rtt_max_seconds"] = self.rtt_max
        if self.rtt_stddev is not None:
            figures["rtt_stddev_seconds"] = self.rtt_stddev
        if self.jitter is not None:
            figures["jitter_seconds"] = self.jitter
        if self.pdv_p99 is not None:
            figures["pdv_p99_seconds"] = self.pdv_p99
        return figures


def train_stats(samples: Sequence[float | None], duplicates: int = 0, late: int = 0) -> TrainStats:
    """Statistics of a train whose i-th sample is packet i's RTT in seconds, or None if it was lost.

    The standard deviation is the population one (as ping's mdev), since the train is the whole test.
    """
    received = [s for s in samples if s is not None]
    if not received:
        return TrainStats(len(samples), 0, duplicates, late, None, None, None, None, None, None, None, None)
    if len(received) == 1:
        # What the general path gives one sample, without its sorts: every statistic is the sample itself,
        # the spread and PDV are 0, and no consecutive pair arrived for IPDV.
        (only,) = received
        return TrainStats(len(samples), 1, duplicates, late, only, only, only, only, only, 0.0, None, 0.0)
    mean = sum(received) / len(received)
    variance = sum((s - mean) ** 2 for s in received) / len(received)
    rtt_min = min(received)
    return TrainStats(
        sent=len(samples),
        received=len(received),
        duplicates=duplicates,
        late=late,
        rtt_min=rtt_min,
        rtt_mean=mean,
        rtt_median=median(received),
        rtt_p95=percentile(received, 95),
        rtt_max=max(received),
        rtt_stddev=math.sqrt(variance),
        jitter=mean_abs_ipdv(samples),
        pdv_p99=percentile([s - rtt_min for s in received], 99),
    )


def train_figures(samples: Sequence[float | None], duplicates: int = 0, late: int = 0) -> dict[str, float]:
    """`train_stats(...).figures()`, the same figures in the same order.

    A train of one packet, the commonest test at scale (a thousand targets pinged once a second), skips
    the statistics object: its figures are the sample itself, zeros, and the counts.
    """
    if len(samples) != 1:
        return train_stats(samples, duplicates, late).figures()
    (only,) = samples
    received = 0 if only is None else 1
    figures: dict[str, float] = {
        "packets_sent": 1.0,
        "packets_received": float(received),
        "packets_lost": float(1 - received),
        "duplicates": float(duplicates),
        "late": float(late),
        "loss_ratio": (1 - received) / 1,
    }
    if only is not None:
        figures["rtt_min_seconds"] = figures["rtt_mean_seconds"] = figures["rtt_median_seconds"] = only
        figures["rtt_p95_seconds"] = figures["rtt_max_seconds"] = only
        figures["rtt_stddev_seconds"] = 0.0
        figures["pdv_p99_seconds"] = 0.0
    return figures
