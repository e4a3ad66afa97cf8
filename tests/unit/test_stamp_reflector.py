"""The STAMP reflector on real loopback sockets: symmetric answers, short packets dropped, TTL copied,
and in authenticated mode nothing answered that the shared secret did not sign."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qiancheng.core.responder_secret import SecretFile, read_secret
from qiancheng.core.stamp_packet import (
    ErrorEstimate,
    build_sender_packet,
    ns_from_ntp,
    ntp_from_ns,
    parse_reflector_packet,
)
from qiancheng.probes.responder.stamp import StampReflector
from tests.conftest import has_ipv6_loopback

ESTIMATE = ErrorEstimate(True, 10, 42)


async def _reflector(host: str) -> StampReflector:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    reflector = StampReflector(sock)
    reflector.start()
    return reflector


@pytest.fixture
async def reflector() -> AsyncIterator[StampReflector]:
    started = await _reflector("127.0.0.1")
    yield started
    started.close()


async def _exchange(reflector: StampReflector, payloads: list[bytes], ttl: int | None = None,
                    wait: float = 0.3) -> list[bytes]:
    """Send each payload from a fresh client socket; everything that came back within `wait`."""
    host, port = reflector.sock.getsockname()[:2]
    family = reflector.sock.family
    loop = asyncio.get_running_loop()
    replies: list[bytes] = []
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.setblocking(False)
        if ttl is not None and family == socket.AF_INET6:
            client.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
        elif ttl is not None:
            client.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        client.connect((host, port))
        for payload in payloads:
            client.send(payload)
        deadline = loop.time() + wait
        while loop.time() < deadline:
            try:
                replies.append(client.recv(65_535))
            except BlockingIOError:
                await asyncio.sleep(0.005)
    return replies


async def test_answers_have_exactly_the_size_received(reflector: StampReflector) -> None:
    sizes = [44, 45, 100, 1472, 9000]
    payloads = [bytes(build_sender_packet(i, time.time_ns(), ESTIMATE, size)) for i, size in enumerate(sizes)]
    replies = await _exchange(reflector, payloads)
    assert sorted(len(r) for r in replies) == sizes
    assert reflector.reflected == len(sizes) and reflector.dropped_short == 0


async def test_packets_shorter_than_the_layout_are_dropped_and_counted(reflector: StampReflector) -> None:
    full = bytes(build_sender_packet(1, time.time_ns(), ESTIMATE))
    replies = await _exchange(reflector, [b"", full[:1], full[:20], full[:43]])
    assert replies == []
    assert reflector.dropped_short == 4 and reflector.reflected == 0


async def test_never_more_bytes_out_than_in_for_any_size(reflector: StampReflector) -> None:
    rng = random.Random(862)
    sizes = [rng.randrange(0, 300) for _ in range(60)]
    payloads = [rng.randbytes(size) for size in sizes]
    replies = await _exchange(reflector, payloads, wait=0.5)
    # a packet is answered when it holds a whole STAMP packet whose Error Estimate multiplier is not 0
    answered = [len(p) for p in payloads if len(p) >= 44 and p[13] != 0]
    assert sorted(len(r) for r in replies) == sorted(answered)  # one answer per valid packet, same size
    assert sum(len(r) for r in replies) <= sum(sizes)
    assert reflector.dropped_short == sum(s < 44 for s in sizes)
    assert reflector.dropped_short + reflector.dropped_corrupt == len(sizes) - len(answered)


async def test_a_packet_with_a_zero_error_multiplier_is_discarded(reflector: StampReflector) -> None:
    corrupt = bytearray(build_sender_packet(1, time.time_ns(), ESTIMATE))
    corrupt[13] = 0  # RFC 4656 §4.1.2: Multiplier MUST NOT be zero; the packet SHOULD be discarded
    assert await _exchange(reflector, [bytes(corrupt)]) == []
    assert reflector.dropped_corrupt == 1 and reflector.reflected == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_reply_copies_the_sender_and_reports_the_ttl_it_arrived_with(host: str) -> None:
    if ":" in host and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) on this machine")
    reflector = await _reflector(host)
    try:
        sent_ns = time.time_ns()
        sender = bytes(build_sender_packet(0xABCDEF01, sent_ns, ESTIMATE, 64))
        [reply] = await _exchange(reflector, [sender], ttl=17)
        received_ns = time.time_ns()
    finally:
        reflector.close()
    packet = parse_reflector_packet(reply)
    assert packet is not None
    assert packet.sender_ttl == 17  # loopback forwards nothing: the TTL we set is the TTL that arrived
    assert packet.sequence == packet.sender_sequence == 0xABCDEF01  # stateless mode (RFC 8762 §4)
    assert packet.sender_timestamp == ntp_from_ns(sent_ns)
    assert packet.sender_error_estimate == ESTIMATE
    t2, t3 = ns_from_ntp(packet.receive_timestamp), ns_from_ntp(packet.timestamp)
    assert sent_ns <= t2 <= t3 <= received_ns  # T2 at arrival, T3 at the reply's send, in that order


async def test_with_a_secret_only_packets_signed_with_it_are_answered(tmp_path: Path) -> None:
    secret_file = tmp_path / "responder.secret"
    secret_file.write_text("f3b1c0de9a8e7d6c5b4a39281706f5e4\n")
    key = read_secret(secret_file)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    reflector = StampReflector(sock, SecretFile(secret_file))
    reflector.start()
    try:
        signed = bytes(build_sender_packet(7, time.time_ns(), ESTIMATE, key=key))
        padded = bytes(build_sender_packet(8, time.time_ns(), ESTIMATE, 400, key=key))
        wrong_key = bytes(build_sender_packet(9, time.time_ns(), ESTIMATE, key=key[::-1]))
        unauthenticated = bytes(build_sender_packet(10, time.time_ns(), ESTIMATE))  # 44 bytes
        unauthenticated_long = bytes(build_sender_packet(11, time.time_ns(), ESTIMATE, 112))
        replies = await _exchange(reflector, [signed, padded, wrong_key, unauthenticated, unauthenticated_long])
    finally:
        reflector.close()
    assert sorted(len(r) for r in replies) == [112, 400]
    for reply in replies:
        packet = parse_reflector_packet(reply, key)  # signed by the reflector with the same key
        assert packet is not None and packet.sender_sequence in (7, 8)
        assert parse_reflector_packet(reply, key[::-1]) is None
    assert reflector.reflected == 2
    assert reflector.dropped_unauthenticated == 2 and reflector.dropped_short == 1
