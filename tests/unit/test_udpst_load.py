"""RFC 9946 load on loopback: the sender keeps a row's rate from its thread, numbers every datagram once
and fills its header; GSO bursts reach the receiver as separate datagrams, which GRO hands back in runs."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from qiancheng.core.udpst.load import LoadSender, enable_gro, read_datagrams
from qiancheng.core.udpst.pdu import RANDOM_SIZE, LoadHeader, SendingRate
from qiancheng.core.udpst.rates import ip_bits_per_second, sending_rates


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        sender.connect(receiver.getsockname())
        yield sender, receiver
    finally:
        receiver.close()
        sender.close()


def run_load(sender_socket: socket.socket, receiver: socket.socket, row: SendingRate, seconds: float,
             **options: bool) -> tuple[LoadSender, list[tuple[int, LoadHeader]]]:  # fmt: skip
    """Send `row` for `seconds` while reading everything that arrives: (datagram length, header) each."""
    got: list[tuple[int, LoadHeader]] = []
    buffer = bytearray(65_535)
    load = LoadSender(sender_socket, row, **options)
    load.start()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            got += ((len(d), LoadHeader.unpack(d)) for d in read_datagrams(receiver, buffer))
            time.sleep(0.0005)
    finally:
        load.stop()
    time.sleep(0.05)
    got += ((len(d), LoadHeader.unpack(d)) for d in read_datagrams(receiver, buffer))
    assert load.error is None
    return load, got


def test_a_row_is_sent_at_its_rate_numbered_once_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    row = sending_rates()[10]  # 10 Mbit/s: a 1222-byte datagram every 1 ms
    load, got = run_load(sender, receiver, row, 0.5)
    assert [header.seq for _, header in got] == list(range(1, load.seq + 1)), "every number once, none skipped"
    assert 0.8 * 500 <= len(got) <= 1.1 * 500
    assert all(length == 1222 == header.payload_bytes for length, header in got)
    first = got[0][1]
    assert abs(first.sent_s * 10**9 + first.sent_ns - time.time_ns()) < 5 * 10**9 and first.test_action == 0
    assert (first.status_sent_s, first.status_sent_ns) == (0, 0), "no status received yet"


def test_gso_bursts_arrive_as_datagrams_and_gro_returns_them(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    assert enable_gro(receiver)
    # 1 ms bursts of 3 (one GSO send) and a 222-byte add-on: 32 Mbit/s, slow enough for a busy test machine
    # to read without its receive buffer overflowing
    row = sending_rates()[32]
    load, got = run_load(sender, receiver, row, 0.3)
    assert load.gso, "this kernel has UDP GSO"
    assert sorted(header.seq for _, header in got) == list(range(1, load.seq + 1))
    assert {length for length, _ in got} == {1222, 222} and all(n == h.payload_bytes for n, h in got)
    sent_bits = sum((n + 28) * 8 for n, _ in got)
    assert sent_bits / 0.3 == pytest.approx(ip_bits_per_second(row), rel=0.25)


def test_random_sizes_are_drawn_per_burst_within_bounds_and_the_status_time_is_echoed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiver = pair
    row = SendingRate(0, 0, 0, 1000, 0, 0, RANDOM_SIZE | 1222)  # a random-sized datagram every 1 ms
    load = LoadSender(sender, row, random_payload=True)
    load.status_received(1_796_687_564, 5)
    load.start()
    time.sleep(0.2)
    load.stop()
    got = [bytes(d) for d in read_datagrams(receiver)]
    sizes = {len(d) for d in got}
    assert len(sizes) > 20 and min(sizes) >= 52 and max(sizes) <= 1222
    header = LoadHeader.unpack(got[-1])
    assert (header.status_sent_s, header.status_sent_ns) == (1_796_687_564, 5)
    assert any(d[32:] != bytes(len(d) - 32) for d in got if len(d) > 64), "random padding"
