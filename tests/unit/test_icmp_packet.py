"""ICMP echo packets: built and parsed bytes checked against scapy, which builds them independently."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

from qiancheng.probes.measure.icmp_packet import build_echo_request, checksum, parse_echo_reply

PAYLOAD = bytes(range(56))


def test_checksum_matches_rfc1071_example() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is its complement.
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2
    assert checksum(bytes.fromhex("0001f203f4f5f6f7") + b"\x01") == 0xFFFF - 0xDEF2  # odd length pads a zero


@pytest.mark.parametrize(("identifier", "sequence"), [(0, 0), (0x1234, 1), (0xFFFF, 0xFFFF), (7, 40000)])
@pytest.mark.parametrize("payload", [PAYLOAD, PAYLOAD + b"x", b"\xff" * 16])
def test_ipv4_echo_request_is_what_scapy_builds(identifier: int, sequence: int, payload: bytes) -> None:
    expected = bytes(ICMP(type=8, code=0, id=identifier, seq=sequence) / payload)
    assert build_echo_request(4, identifier, sequence, payload) == expected


def test_ipv6_echo_request_leaves_the_checksum_to_the_kernel() -> None:
    expected = bytes(ICMPv6EchoRequest(id=0x4242, seq=9, data=PAYLOAD, cksum=0))
    assert build_echo_request(6, 0x4242, 9, PAYLOAD) == expected


def test_ipv4_reply_with_ip_header_and_options_is_parsed() -> None:
    plain = bytes(IP(src="127.0.0.1", dst="127.0.0.1") / ICMP(type=0, id=77, seq=1000) / PAYLOAD)
    with_options = bytes(IP(src="127.0.0.1", dst="127.0.0.1", options=b"\x01\x01\x01\x00") / ICMP(type=0, id=77, seq=1000) / PAYLOAD)
    assert with_options[0] & 0x0F == 6  # the option made the header 24 bytes long
    for wire in (plain, with_options):
        echo = parse_echo_reply(4, wire, with_ip_header=True)
        assert echo is not None
        assert (echo.identifier, echo.sequence, echo.payload) == (77, 1000, PAYLOAD)


def test_ipv6_reply_is_parsed() -> None:
    wire = bytes(ICMPv6EchoReply(id=5, seq=6, data=PAYLOAD, cksum=0))
    echo = parse_echo_reply(6, wire, with_ip_header=False)
    assert echo is not None and (echo.identifier, echo.sequence, echo.payload) == (5, 6, PAYLOAD)


@pytest.mark.parametrize(
    ("version", "wire", "with_ip_header"),
    [
        (4, bytes(ICMP(type=8, id=1, seq=1) / PAYLOAD), False),  # our own request, looped back
        (4, bytes(ICMP(type=3, code=1) / PAYLOAD), False),  # host unreachable
        (4, bytes(ICMP(type=0, code=1, id=1, seq=1)), False),  # a reply with a code that does not exist
        (4, b"\x00\x00\x00", False),  # runt
        (4, bytes(ICMP(type=0, id=1, seq=1)), True),  # claimed IP header missing
        (6, bytes(ICMPv6EchoRequest(id=1, seq=1, cksum=0)), False),
        (6, bytes(ICMP(type=0, id=1, seq=1)), False),  # an IPv4 reply type on an IPv6 socket
    ],
)
def test_anything_but_an_echo_reply_is_ignored(version: int, wire: bytes, with_ip_header: bool) -> None:
    assert parse_echo_reply(version, wire, with_ip_header) is None


@pytest.mark.parametrize("link_header", [b"", bytes(14), bytes(16)], ids=["tun", "ethernet", "cooked"])
def test_a_looped_back_request_is_found_behind_any_link_header(link_header: bytes) -> None:
    from qiancheng.probes.measure.icmp_packet import parse_looped_request

    v4 = bytes(IP(src="198.18.0.1", dst="198.18.0.2") / ICMP(type=8, id=300, seq=65535) / PAYLOAD)
    v6 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / ICMPv6EchoRequest(id=301, seq=0, data=PAYLOAD))
    for version, packet, expected in ((4, v4, (300, 65535)), (6, v6, (301, 0))):
        echo = parse_looped_request(version, link_header + packet)
        assert echo is not None and (echo.identifier, echo.sequence, echo.payload) == (*expected, PAYLOAD)


def test_a_looped_back_reply_or_runt_is_not_a_request() -> None:
    from qiancheng.probes.measure.icmp_packet import parse_looped_request

    reply = bytes(IP(src="198.18.0.1", dst="198.18.0.2") / ICMP(type=0, id=1, seq=1) / PAYLOAD)
    assert parse_looped_request(4, bytes(14) + reply) is None
    assert parse_looped_request(4, bytes(30)) is None
    assert parse_looped_request(6, bytes(14) + reply) is None


@pytest.mark.parametrize("size", [16, 17, 56, 1000])
def test_a_payload_sum_given_once_builds_the_same_packet(size: int) -> None:
    from qiancheng.probes.measure.icmp_packet import ones_complement_sum

    for token in (bytes(8), b"\xff" * 8, bytes(range(200, 208))):
        payload = token + bytes(i & 0xFF for i in range(size - 8))
        # the sender sums the token and the padding apart, unfolded: the packet must not change
        given = ones_complement_sum(token) + ones_complement_sum(payload[8:])
        for identifier, sequence in ((0, 0), (0xFFFF, 0xFFFF), (0x1234, 40000)):
            packet = build_echo_request(4, identifier, sequence, payload, given)
            assert packet == build_echo_request(4, identifier, sequence, payload)
            assert checksum(packet) == 0  # a correct checksum makes the whole message sum to all ones


def test_a_looped_back_request_with_a_header_longer_than_its_packet_is_skipped() -> None:
    from qiancheng.probes.measure.icmp_packet import parse_looped_request

    # IHL 15 (60 bytes) in a 28-byte packet whose length field matches: no ICMP header behind it
    bogus = bytes([0x4F, 0, 0, 28]) + bytes(24)
    assert parse_looped_request(4, bogus) is None
