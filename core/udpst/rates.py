"""The sending-rate table of the UDP Speed Test Protocol: 1153 rows from 0.1 Mbit/s to 72 Gbit/s.

The server's rate adjustment moves an index through this table; the load's sender sends what the
row at the index says (`pdu.SendingRate`): transmitter 1 every 100 µs, transmitter 2 every 1 ms with
an add-on datagram after its burst. Rows 1-1000 are exactly 1-1000 Mbit/s at the IP layer (row 0 is
one datagram of random size every 50 ms): below 1 Gbit/s the table steps by 1 Mbit/s, from 100 Mbit/s
bursts on transmitter 1, 10 Mbit/s bursts on transmitter 2 and a 1-9 Mbit/s add-on (with the
traditional MTU: 120, 12 and 1-11 Mbit/s, from 1500-byte packets). Above row 1000 (HIGH_SPEED_INDEX) rows
grow transmitter 1's burst or, with jumbo datagrams, first its size: 1.1 Gbit/s up.

Sizes are UDP payload over IPv4 (an IP packet is 28 bytes more); an IPv6 sender takes 20 bytes off
every payload, so that packets, and rates, stay the same. Both ends must build the same table, so
the jumbo and traditional-MTU choices travel in the Setup Request and must match the server's.
"""

from __future__ import annotations

from functools import cache
from typing import Final

from .pdu import RANDOM_SIZE, SendingRate

__all__ = ["HIGH_SPEED_INDEX", "MAX_INDEX", "IP_UDP_OVERHEAD", "MIN_PAYLOAD", "sending_rates", "ip_bits_per_second"]

#: the row of exactly 1 Gbit/s in every variant, where the search stops taking big steps
HIGH_SPEED_INDEX: Final = 1000
MAX_INDEX: Final = 1152
#: an IPv4 header and a UDP header
IP_UDP_OVERHEAD: Final = 28
#: the smallest Load datagram payload: its 32-byte header and 20 more
MIN_PAYLOAD: Final = 52
_PAYLOAD: Final = 1250 - IP_UDP_OVERHEAD  # 1222: IP packets of 1250 bytes, 100 Mbit/s in 100 µs bursts of 1
_TRADITIONAL_PAYLOAD: Final = 1500 - IP_UDP_OVERHEAD  # 1472
_JUMBO_PAYLOAD: Final = 9000 - IP_UDP_OVERHEAD  # 8972
_T1_US: Final = 100
_T2_US: Final = 1000
_ROW0_US: Final = 50_000
_MAX_BURST: Final = 100


def _low_rows(payload: int, bursts1: int, bursts2: int, addons: int) -> list[SendingRate]:
    """Rows 0-1000: transmitter 1's burst k, transmitter 2's burst i, an add-on of j Mbit/s."""
    rows: list[SendingRate] = []
    for k in range(bursts1 + 1):
        for i in range(bursts2):
            t1 = (_T1_US, payload, k) if k else (0, 0, 0)
            t2 = (payload, i) if i else (0, 0)
            if k == 0 and i == 0:  # the slowest row: one datagram of random size every 50 ms
                rows.append(SendingRate(0, 0, 0, _ROW0_US, 0, 0, RANDOM_SIZE | payload))
            else:
                rows.append(SendingRate(*t1, _T2_US, *t2, 0) if i else SendingRate(*t1))
            # each add-on datagram every 1 ms is j Mbit/s at the IP layer: 125·j bytes with its headers
            rows += (SendingRate(*t1, _T2_US, *t2, 125 * j - IP_UDP_OVERHEAD) for j in range(1, addons + 1))
            if len(rows) > HIGH_SPEED_INDEX:
                return rows[: HIGH_SPEED_INDEX + 1]
    raise AssertionError("the low rows always reach 1 Gbit/s")


def _high_rows(jumbo: bool, traditional_mtu: bool) -> list[SendingRate]:
    """Rows 1001-1152: with jumbo datagrams, 100 µs bursts of 10 growing from 1375 to 9000-byte packets,
    then bursts of 11 to 100 at 9000; without, bursts growing at the base size up to 100."""
    count = MAX_INDEX - HIGH_SPEED_INDEX
    if jumbo:
        sizes = [size - IP_UDP_OVERHEAD for size in range(1375, 9001, 125)]
        rows = [SendingRate(_T1_US, size, 10) for size in sizes]
        rows += (SendingRate(_T1_US, _JUMBO_PAYLOAD, burst) for burst in range(11, 11 + count - len(rows)))
        return rows
    payload, first = (_TRADITIONAL_PAYLOAD, 9) if traditional_mtu else (_PAYLOAD, 11)
    return [SendingRate(_T1_US, payload, min(first + offset, _MAX_BURST)) for offset in range(count)]


@cache
def sending_rates(jumbo: bool = True, traditional_mtu: bool = False) -> tuple[SendingRate, ...]:
    """The table both ends build for these Setup modifiers (OB-UDPST's defaults: jumbo on, 1250-byte packets)."""
    if traditional_mtu:
        low = _low_rows(_TRADITIONAL_PAYLOAD, bursts1=8, bursts2=10, addons=11)
    else:
        low = _low_rows(_PAYLOAD, bursts1=10, bursts2=10, addons=9)
    return (*low, *_high_rows(jumbo, traditional_mtu))


def _mean_size(size: int) -> int:
    # a random size is drawn between the smallest datagram and the maximum: count the middle
    return (MIN_PAYLOAD + (size & ~RANDOM_SIZE)) // 2 if size & RANDOM_SIZE else size


def ip_bits_per_second(row: SendingRate) -> int:
    """The rate a row sends at, counting IP packets (payload, UDP and IPv4 headers)."""
    total = 0
    if row.burst1:
        total += (1_000_000 // row.interval1_us) * row.burst1 * (_mean_size(row.payload1) + IP_UDP_OVERHEAD)
    if row.interval2_us:
        per_second = 1_000_000 // row.interval2_us
        if row.burst2:
            total += per_second * row.burst2 * (_mean_size(row.payload2) + IP_UDP_OVERHEAD)
        if row.addon2:
            total += per_second * (_mean_size(row.addon2) + IP_UDP_OVERHEAD)
    return 8 * total
