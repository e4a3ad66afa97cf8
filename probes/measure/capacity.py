"""Kind `capacity`: the maximum IP-layer capacity of RFC 9097, measured with the UDP Speed Test Protocol
(RFC 9946) against the responder's server or OB-UDPST's `udpst`.

The rate is searched by the server from trial to trial (every 50 ms); the result is the highest
sub-interval (1 s) rate at the IP layer (each datagram counted with its UDP and IP headers), with the
Ethernet layer's equivalent beside it, and at that sub-interval the loss, reordering and duplication
ratios, the range of the RTT above its minimum and the range of the one-way delay variation. One
sample per sub-interval: its IP-layer rate, bit/s. This is the figure ITU-T Y.1540, the Broadband
Forum's TR-471 and ETSI TS 103 222-2 define for access capacity; the download and upload kinds measure
TCP goodput, which the docs (methodology.md) compare with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from qiancheng.core.addresses import resolve, split_host_port
from qiancheng.core.errors import MeasurementError
from qiancheng.core.kind_settings import CapacitySettings
from qiancheng.core.result import Target
from qiancheng.core.udpst import PROTOCOL_VERSION
from qiancheng.core.udpst.auth import KeyFileError, load_key_table
from qiancheng.core.udpst.capacity import maximum
from qiancheng.core.udpst.client import CapacityTest, ConnectionResult, run_test
from qiancheng.core.udpst.pdu import ALGORITHM_B, ALGORITHM_C
from qiancheng.core.udpst.rates import HIGH_SPEED_INDEX, ip_bits_per_second, sending_rates

from .outcome import Outcome

__all__ = ["measure", "capacity_test"]


def _fixed_row(mbps: int, jumbo: bool, traditional_mtu: bool) -> int:
    """The sending-rate row of `mbps` (rows 1-1000 are 1-1000 Mbit/s; above, the first at least that fast)."""
    if mbps <= HIGH_SPEED_INDEX:
        return mbps
    table = sending_rates(jumbo, traditional_mtu)
    return next((index for index, row in enumerate(table) if ip_bits_per_second(row) >= mbps * 1_000_000),
                len(table) - 1)  # fmt: skip


def capacity_test(settings: CapacitySettings) -> CapacityTest:
    """What to ask the server for these settings."""
    key = None
    if settings.key_file is not None:
        try:
            key = load_key_table(Path(settings.key_file)).get(settings.key_id)
        except KeyFileError as error:
            raise MeasurementError("error", f"key_file: {error}") from None
        if key is None:
            raise MeasurementError("error", f"key_file {settings.key_file} has no key {settings.key_id}")
    rate_index = None
    if settings.fixed_rate is not None:
        rate_index = _fixed_row(settings.fixed_rate, settings.jumbo, settings.traditional_mtu)
    return CapacityTest(
        upstream=settings.direction == "upload", duration_s=int(settings.duration),
        sub_interval_ms=round(float(settings.sub_interval) * 1000), trial_ms=round(float(settings.trial_interval) * 1000),
        connections=settings.connections, algorithm=ALGORITHM_C if settings.algorithm == "C" else ALGORITHM_B,
        rate_index=rate_index, jumbo=settings.jumbo, traditional_mtu=settings.traditional_mtu,
        low_threshold_ms=round(float(settings.low_threshold) * 1000),
        upper_threshold_ms=round(float(settings.upper_threshold) * 1000),
        seq_error_threshold=settings.seq_error_threshold, max_bandwidth_mbps=settings.max_bandwidth, key=key,
        key_id=settings.key_id,
    )  # fmt: skip


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


async def measure(target: Target, settings: CapacitySettings) -> Outcome:
    """One capacity test to the target's RFC 9946 server."""
    try:
        host, port = split_host_port(target.address, settings.port)
    except ValueError as error:
        raise MeasurementError("error", str(error)) from None
    test = capacity_test(settings)
    _, address = await resolve(host, port, settings.family)
    results = await run_test(address, port, test)
    ipv6 = ":" in address
    capacity = maximum([connection.sub_intervals for connection in results], ipv6=ipv6)
    info = {
        "address": address, "port": str(port), "direction": settings.direction, "layer": "ip",
        "algorithm": settings.algorithm if settings.fixed_rate is None else "fixed",
        "protocol_version": str(results[0].activation.version if results else PROTOCOL_VERSION),
        "authenticated": "yes" if test.key is not None else "no", "stopped_by": _stopped_by(results),
    }  # fmt: skip
    if capacity is None:
        return Outcome(info=info, error="loss", detail="no sub-interval completed: nothing of the load arrived")
    top = capacity.maximum
    sent = top.datagrams + top.loss
    figures = {
        "capacity_bits_per_second": top.ip_bits_per_second,
        "capacity_ethernet_bits_per_second": top.ethernet_bits_per_second,
        "capacity_mean_bits_per_second": sum(r.ip_bits_per_second for r in capacity.sub_intervals) / len(capacity.sub_intervals),
        "capacity_sub_interval": float(top.index),
        "sub_intervals": float(len(capacity.sub_intervals)),
        "sub_interval_seconds": float(settings.sub_interval),
        "connections": float(len(results)),
        "loss_ratio": capacity.loss_ratio,
        # over the whole test: the maximum is, by its nature, a sub-interval that lost little
        "test_loss_ratio": _ratio(sum(r.loss for r in capacity.sub_intervals),
                                  sum(r.datagrams + r.loss for r in capacity.sub_intervals)),
        "reordered_ratio": top.reordered / sent if sent else 0.0,
        "duplicate_ratio": top.duplicates / sent if sent else 0.0,
        "datagrams": float(top.datagrams),
    }  # fmt: skip
    for name, value in (("rtt_variation_min_seconds", _seconds(top.rtt_var_min_ms)),
                        ("rtt_variation_max_seconds", _seconds(top.rtt_var_max_ms)),
                        ("delay_variation_min_seconds", _seconds(top.delay_var_min_ms)),
                        ("delay_variation_max_seconds", _seconds(top.delay_var_max_ms)),
                        ("rtt_min_seconds", _seconds(_lowest(r.rtt_min_ms for r in results)))):  # fmt: skip
        if value is not None:
            figures[name] = value
    return Outcome(figures=figures, info=info, samples=[r.ip_bits_per_second for r in capacity.sub_intervals])


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _lowest(values: Iterable[int | None]) -> int | None:
    present = [value for value in values if value is not None]
    return min(present) if present else None


def _stopped_by(results: list[ConnectionResult]) -> str:
    ends = {result.stopped_by for result in results}
    return ends.pop() if len(ends) == 1 else ",".join(sorted(ends))
