"""From the sub-intervals' counts to RFC 9097's figures: the maximum IP-layer capacity and where it was.

A sub-interval's rate is its datagrams' bytes over its measured length, counting each datagram at the
layer asked: the UDP payload its header declared, plus 28 bytes of UDP and IPv4 headers at the IP layer
(48 with IPv6's), plus 14 more for an Ethernet frame without its FCS, 18 with it. Several connections
add up sub-interval by sub-interval. The maximum is the highest IP-layer rate over the sub-intervals
(the earliest of equal ones), and the other layers and the loss, reordering and delay figures are those
of that same sub-interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .pdu import NO_VALUE, SubIntervalStats

__all__ = ["Capacity", "SubIntervalRate", "IP_OVERHEAD", "ETHERNET_OVERHEAD", "ETHERNET_FCS_OVERHEAD",
           "IPV6_EXTRA", "rates", "maximum"]  # fmt: skip

IP_OVERHEAD: Final = 28  # UDP and IPv4 headers
ETHERNET_OVERHEAD: Final = IP_OVERHEAD + 14  # and an Ethernet header
ETHERNET_FCS_OVERHEAD: Final = ETHERNET_OVERHEAD + 4  # and its frame check sequence
IPV6_EXTRA: Final = 20  # an IPv6 header is 20 bytes longer than IPv4's


@dataclass(frozen=True, slots=True)
class SubIntervalRate:
    """One sub-interval, all connections together."""

    index: int  # 1-based, as the protocol numbers sub-intervals
    ip_bits_per_second: float
    ethernet_bits_per_second: float  # without the FCS
    datagrams: int
    loss: int
    reordered: int
    duplicates: int
    delay_var_min_ms: int | None
    delay_var_max_ms: int | None
    rtt_var_min_ms: int | None
    rtt_var_max_ms: int | None
    seconds: float


@dataclass(frozen=True, slots=True)
class Capacity:
    """The maximum and the sub-intervals it was found among."""

    maximum: SubIntervalRate
    sub_intervals: tuple[SubIntervalRate, ...]

    @property
    def loss_ratio(self) -> float:
        """Loss at the maximum: lost over sent (received and lost)."""
        m = self.maximum
        return m.loss / (m.datagrams + m.loss) if m.datagrams + m.loss else 0.0


def _bits_per_second(stats: Sequence[SubIntervalStats], overhead: int) -> float:
    return sum((s.rx_datagrams * overhead + s.rx_bytes) * 8 * 1e6 / s.delta_us for s in stats if s.delta_us)


def _lowest(values: list[int]) -> int | None:
    present = [value for value in values if value != NO_VALUE]
    return min(present) if present else None


def _highest(values: list[int]) -> int | None:
    return max(values) if values else None


def rates(connections: Sequence[Sequence[SubIntervalStats]], ipv6: bool = False) -> list[SubIntervalRate]:
    """Each sub-interval every connection closed, its connections' rates added."""
    extra = IPV6_EXTRA if ipv6 else 0
    count = min((len(closed) for closed in connections), default=0)
    out = []
    for index in range(count):
        stats = [closed[index] for closed in connections]
        out.append(SubIntervalRate(
            index=index + 1,
            ip_bits_per_second=_bits_per_second(stats, IP_OVERHEAD + extra),
            ethernet_bits_per_second=_bits_per_second(stats, ETHERNET_OVERHEAD + extra),
            datagrams=sum(s.rx_datagrams for s in stats), loss=sum(s.loss for s in stats),
            reordered=sum(s.reordered for s in stats), duplicates=sum(s.duplicates for s in stats),
            delay_var_min_ms=_lowest([s.delay_var_min_ms for s in stats if s.delay_var_count]),
            delay_var_max_ms=_highest([s.delay_var_max_ms for s in stats if s.delay_var_count]),
            rtt_var_min_ms=_lowest([s.rtt_var_min_ms for s in stats]),
            rtt_var_max_ms=_highest([s.rtt_var_max_ms for s in stats if s.rtt_var_min_ms != NO_VALUE]),
            seconds=max(s.delta_us for s in stats) / 1e6,
        ))  # fmt: skip
    return out


def maximum(connections: Sequence[Sequence[SubIntervalStats]], ipv6: bool = False) -> Capacity | None:
    """The highest IP-layer sub-interval (the earliest of equals), or None when no sub-interval closed."""
    all_rates = rates(connections, ipv6)
    if not all_rates:
        return None
    best = all_rates[0]
    for rate in all_rates[1:]:
        if rate.ip_bits_per_second > best.ip_bits_per_second:
            best = rate
    return Capacity(best, tuple(all_rates))
