"""STAMP train accounting, fed with reflector packets built here: the RFC 8762 delays, loss, duplicates,
late and reordered replies, and the clock-error statement."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from qiancheng.core.stamp_packet import (
    ErrorEstimate,
    ReflectorPacket,
    build_reflector_packet,
    build_sender_packet,
    parse_reflector_packet,
)
from qiancheng.probes.measure.stamp import StampTrain

T0 = 1_795_600_000_000_000_000
MS = 1_000_000
OWN = ErrorEstimate.from_seconds(0.001, synchronized=True)
REFLECTOR = ErrorEstimate.from_seconds(0.002, synchronized=True)


def _train(count: int, timeout: float = 1.0) -> StampTrain:
    """A train whose packet i left at T0 + 10 ms·i (wall and monotonic clocks alike)."""
    train = StampTrain(count, timeout)
    for i in range(count):
        train.sent(T0 + 10 * MS * i, 10 * MS * i)
    return train


def _reply(train: StampTrain, index: int, t2: int, t3: int, estimate: ErrorEstimate = REFLECTOR) -> ReflectorPacket:
    sent = bytes(build_sender_packet(index, train.sent_wall_ns[index], OWN))
    wire = build_reflector_packet(sent, t2, 61, estimate, t3)
    assert wire is not None
    packet = parse_reflector_packet(bytes(wire))
    assert packet is not None
    return packet


def _arrive(train: StampTrain, index: int, forward_ms: float, hold_ms: float, backward_ms: float) -> None:
    t1 = train.sent_wall_ns[index]
    t2 = t1 + round(forward_ms * MS)
    t3 = t2 + round(hold_ms * MS)
    t4 = t3 + round(backward_ms * MS)
    perf = train.sent_perf_ns[index] + (t4 - t1) + 50_000  # read from the socket 50 µs after the kernel stamp
    train.reply(_reply(train, index, t2, t3), t4, t4 + 50_000, perf, 60)


def test_round_trip_takes_out_the_reflectors_hold_and_one_way_delays_are_read() -> None:
    train = _train(3)
    _arrive(train, 0, forward_ms=3, hold_ms=0.5, backward_ms=2)
    _arrive(train, 1, forward_ms=4, hold_ms=7, backward_ms=2)
    _arrive(train, 2, forward_ms=5, hold_ms=0.1, backward_ms=3)
    assert train.samples == pytest.approx([0.005, 0.006, 0.008], abs=1e-9)  # (T4 − T1) − (T3 − T2)
    figures = train.figures(OWN)
    assert figures["forward_delay_median_seconds"] == pytest.approx(0.004, abs=1e-9)
    assert figures["backward_delay_median_seconds"] == pytest.approx(0.002, abs=1e-9)
    assert figures["rtt_median_seconds"] == pytest.approx(0.006, abs=1e-9)
    assert figures["clock_error_seconds"] == pytest.approx(OWN.seconds + REFLECTOR.seconds)
    assert figures["clock_synchronized"] == 1.0
    assert train.reflector_ttl == 61 and train.reply_ttl == 60
    assert figures["packets_received"] == 3 and figures["loss_ratio"] == 0
    assert 1 <= figures["mos"] <= 4.5 and "r_factor" in figures


def test_offset_clocks_show_in_one_way_delays_but_not_in_the_round_trip() -> None:
    offset_ms = 40.0  # the reflector's clock runs 40 ms ahead
    train = _train(1)
    t1 = train.sent_wall_ns[0]
    t2, t3 = t1 + round((3 + offset_ms) * MS), t1 + round((4 + offset_ms) * MS)
    t4 = t1 + 7 * MS
    train.reply(_reply(train, 0, t2, t3), t4, t4, 7 * MS, None)
    assert train.samples == pytest.approx([0.006], abs=1e-9)
    figures = train.figures(OWN)
    assert figures["forward_delay_median_seconds"] == pytest.approx(0.043, abs=1e-9)
    assert figures["backward_delay_median_seconds"] == pytest.approx(-0.037, abs=1e-9)  # reported, not hidden


def test_an_unsynchronized_end_clears_clock_synchronized() -> None:
    train = _train(1)
    t1 = train.sent_wall_ns[0]
    train.reply(_reply(train, 0, t1 + MS, t1 + MS, ErrorEstimate.from_seconds(16, False)), t1 + 2 * MS, t1, 2 * MS, None)
    figures = train.figures(OWN)
    assert figures["clock_synchronized"] == 0.0
    assert figures["clock_error_seconds"] == pytest.approx(16 + OWN.seconds, rel=0.01)


def test_loss_duplicates_late_and_reordering_are_counted_apart() -> None:
    train = _train(6, timeout=0.5)
    _arrive(train, 0, 1, 0, 1)
    _arrive(train, 2, 1, 0, 1)
    _arrive(train, 1, 1, 0, 1)  # after 2: reordered
    _arrive(train, 1, 1, 0, 1)  # a second copy: duplicate
    _arrive(train, 4, 1, 0, 1)
    _arrive(train, 3, 300, 0, 300)  # after the 0.5 s timeout: late, and not a sample
    # packet 5 never comes back: lost
    figures = train.figures(OWN)
    assert train.samples[3] is None and train.samples[5] is None
    assert figures["packets_sent"] == 6 and figures["packets_received"] == 4
    assert figures["loss_ratio"] == pytest.approx(2 / 6)
    assert figures["duplicates"] == 1 and figures["late"] == 1 and figures["reordered"] == 1


def test_a_reply_to_another_train_is_ignored() -> None:
    train = _train(2)
    other = _train(2)
    other.sent_wall_ns[0] += 1234  # same sequence number, another T1: a stale reply of an earlier train
    packet = _reply(other, 0, T0 + MS, T0 + MS)
    train.reply(packet, T0 + 2 * MS, T0 + 2 * MS, 2 * MS, None)
    assert train.received == 0 and train.duplicates == 0


def test_a_wall_clock_step_falls_back_to_the_monotonic_clock() -> None:
    train = _train(1)
    t1 = train.sent_wall_ns[0]
    # the kernel stamp says 10 s: the wall clock jumped; the monotonic reads say 5 ms
    train.reply(_reply(train, 0, t1 + 2 * MS, t1 + 3 * MS), t1 + 10_000 * MS, t1 + 10_000 * MS, 5 * MS, None)
    assert train.samples == pytest.approx([0.004], abs=1e-9)


def test_no_reply_means_no_delay_figures() -> None:
    figures = _train(3).figures(OWN)
    assert figures["loss_ratio"] == 1.0
    for name in ("rtt_median_seconds", "forward_delay_median_seconds", "clock_error_seconds", "mos"):
        assert name not in figures


def test_the_kernels_send_timestamp_replaces_the_clock_read_before_the_send() -> None:
    train = _train(2)
    t1 = train.sent_wall_ns[1]
    # the error queue hands back the packet behind its link, IP and UDP headers (here 14 + 20 + 8 bytes)
    looped = bytes(42) + bytes(build_sender_packet(1, t1, OWN))
    train.transmitted(looped, t1 + 30_000)  # the kernel sent it 30 µs after our clock read
    train.transmitted(bytes(42) + bytes(build_sender_packet(0, t1 + 1, OWN)), t1)  # not packet 0's T1: ignored
    assert train.sent_kernel_ns == [0, t1 + 30_000]
    t2, t3, t4 = t1 + 2 * MS, t1 + 3 * MS, t1 + 5 * MS
    train.reply(_reply(train, 1, t2, t3), t4, t4, train.sent_perf_ns[1] + 5 * MS, None)
    assert train.samples[1] == pytest.approx(0.004 - 30e-6, abs=1e-9)
    assert train.forward == pytest.approx([0.002 - 30e-6], abs=1e-9)


async def test_nothing_is_counted_after_the_reply_that_completes_the_train() -> None:
    train = StampTrain(1, 1.0)
    t1 = time.time_ns()
    train.sent(t1, time.perf_counter_ns())  # sent now: the reply is read on this host's clocks
    train.complete = asyncio.get_running_loop().create_future()
    wire = bytes(build_reflector_packet(bytes(build_sender_packet(0, t1, OWN)), t1 + MS, 64, REFLECTOR, t1 + MS) or b"")
    # the reply and its copy wait together on a loopback UDP socket when the train reads them
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as reader, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as writer:
        reader.bind(("127.0.0.1", 0))
        reader.setblocking(False)
        writer.sendto(wire, reader.getsockname())
        writer.sendto(wire, reader.getsockname())
        time.sleep(0.05)
        train.read(reader)
        assert train.received == 1 and train.complete.done()
        assert train.duplicates == 0  # the copy came after the train was complete
        train.read(reader)
        assert train.duplicates == 0
