"""What an SLA objective can measure: indicators computed over a window of stored results.

Pure functions over plain data, in base units (seconds, ratios 0..1, bits per second). Percentiles are
exact, over every sample in the window (linear interpolation between closest ranks, as
`core.stats.percentile`), never interpolated from histogram buckets. An indicator with nothing to
compute from returns None: "no data", which is neither a pass nor a breach.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from qiancheng.core.kinds import kinds_with
from qiancheng.core.stats import median, percentile

from ..records import WindowRow

__all__ = [
    "Unit",
    "Bound",
    "Indicator",
    "INDICATORS",
    "TRAIN_KINDS",
    "MOS_FIGURE",
    "THROUGHPUT_FIGURE",
]

Unit = Literal["seconds", "ratio", "bits_per_second", "score"]
#: `max`: a ceiling (lower is better, the value must be ≤ threshold); `min`: a floor (≥ threshold)
Bound = Literal["max", "min"]

#: kinds whose samples are round-trip times
TRAIN_KINDS: Final = kinds_with("round_trips")
#: the estimated MOS (ITU-T G.107 E-model) a result may carry, 1..5
MOS_FIGURE: Final = "mos"
THROUGHPUT_FIGURE: Final = "throughput_bits_per_second"


@dataclass(frozen=True, slots=True)
class Indicator:
    """A named indicator: its unit, which bound makes sense, the kinds it reads, and how it is computed."""

    name: str
    unit: Unit
    bound: Bound
    kinds: tuple[str, ...] | None  # None: results of any kind
    compute: Callable[[Sequence[WindowRow]], float | None]
    meaning: str


def _rtts(rows: Sequence[WindowRow]) -> list[float]:
    return [s for row in rows for s in row.samples if s is not None]


def _rtt_quantile(q: float) -> Callable[[Sequence[WindowRow]], float | None]:
    def compute(rows: Sequence[WindowRow]) -> float | None:
        values = _rtts(rows)
        return percentile(values, q) if values else None

    return compute


def jitter(rows: Sequence[WindowRow]) -> float | None:
    """Mean absolute IPDV (RFC 3393) over every consecutive received pair within each test, seconds."""
    total, pairs = 0.0, 0
    for row in rows:
        for a, b in zip(row.samples, row.samples[1:]):
            if a is not None and b is not None:
                total += abs(b - a)
                pairs += 1
    return total / pairs if pairs else None


def pdv(rows: Sequence[WindowRow]) -> float | None:
    """RFC 5481 PDV: the 99th percentile of each RTT minus the window's minimum RTT, seconds."""
    values = _rtts(rows)
    if not values:
        return None
    low = min(values)
    return percentile([v - low for v in values], 99)


def loss(rows: Sequence[WindowRow]) -> float | None:
    """Packets with no reply within the timeout / packets sent, over the window (RFC 7680), 0..1."""
    sent = received = 0.0
    for row in rows:
        if "packets_sent" in row.figures and "packets_received" in row.figures:
            sent += row.figures["packets_sent"]
            received += row.figures["packets_received"]
        elif row.samples:  # a result without counters: its samples say which packets came back
            sent += len(row.samples)
            received += sum(1 for s in row.samples if s is not None)
    # (sent - received) / sent, not 1 - received/sent: 1 lost of 1000 must be exactly 0.001
    return (sent - received) / sent if sent else None


def availability(rows: Sequence[WindowRow]) -> float | None:
    """Successful tests / tests in the window, 0..1."""
    return sum(1 for row in rows if row.success) / len(rows) if rows else None


def _figure_median(figure: str) -> Callable[[Sequence[WindowRow]], float | None]:
    def compute(rows: Sequence[WindowRow]) -> float | None:
        values = [row.figures[figure] for row in rows if row.success and figure in row.figures]
        return median(values) if values else None

    return compute


def _indicators(*items: Indicator) -> dict[str, Indicator]:
    return {item.name: item for item in items}


#: every indicator a profile may name
INDICATORS: Final = _indicators(
    Indicator("rtt_p95", "seconds", "max", TRAIN_KINDS, _rtt_quantile(95),
              "95th percentile of every round-trip sample in the window"),
    Indicator("rtt_median", "seconds", "max", TRAIN_KINDS, _rtt_quantile(50),
              "median of every round-trip sample in the window"),
    Indicator("jitter", "seconds", "max", TRAIN_KINDS, jitter,
              "mean absolute delay variation of consecutive packets within each test (RFC 3393 IPDV)"),
    Indicator("pdv", "seconds", "max", TRAIN_KINDS, pdv,
              "99th percentile of RTT minus the window's minimum RTT (RFC 5481 PDV)"),
    Indicator("loss", "ratio", "max", TRAIN_KINDS, loss,
              "packets without a reply within the timeout / packets sent (RFC 7680)"),
    Indicator("availability", "ratio", "min", None, availability,
              "successful tests / tests"),
    Indicator("download", "bits_per_second", "min", ("download",), _figure_median(THROUGHPUT_FIGURE),
              "median goodput of the successful download tests"),
    Indicator("upload", "bits_per_second", "min", ("upload",), _figure_median(THROUGHPUT_FIGURE),
              "median goodput of the successful upload tests"),
    Indicator("mos", "score", "min", TRAIN_KINDS, _figure_median(MOS_FIGURE),
              "median estimated MOS (ITU-T G.107 E-model, figure `mos`) of the tests that carry it"),
)  # fmt: skip
