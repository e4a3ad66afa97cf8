"""Path probes and replies: every probe's checksum is the one scapy computes over the whole packet, a flow
keeps what load balancers hash on, and each reply (time exceeded, unreachable, echo reply, SYN-ACK, RST,
MPLS extensions placed as RFC 4884 and as older routers place them) names its probe."""

from __future__ import annotations

import pytest
from scapy.contrib.mpls import MPLS, ICMPExtension_MPLS
from scapy.layers.inet import ICMP, IP, TCP, UDP, ICMPExtension_Header
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6TimeExceeded, IPv6
from scapy.packet import Raw
from scapy.utils import checksum

from qiancheng.probes.measure.path_packet import Flow, Reply, build_probe, parse_icmp, parse_tcp

SOURCES = {4: ("198.18.0.1", "198.18.0.14"), 6: ("2001:2::1", "2001:2:0:3::2")}
NUMBERS = {(4, "icmp"): 1, (6, "icmp"): 58, (4, "udp"): 17, (6, "udp"): 17, (4, "tcp"): 6, (6, "tcp"): 6}


def flow(version: int, protocol: str, port: int = 40_000) -> Flow:
    source, destination = SOURCES[version]
    return Flow(protocol, version, source, destination, port, 33434, icmp_checksum=0x1234,  # type: ignore[arg-type]
                tcp_sequence_high=0xBEEF)


def sent_packet(version: int, protocol: str, identity: int) -> bytes:
    """The probe as it left, with the IP header the kernel wrote (TTL 1), as a router quotes it."""
    source, destination = SOURCES[version]
    number = NUMBERS[(version, protocol)]
    layer = IP(src=source, dst=destination, proto=number, ttl=1) if version == 4 else IPv6(src=source, dst=destination, nh=number, hlim=1)
    return bytes(layer / Raw(build_probe(flow(version, protocol), identity)))


def recomputed_checksum(version: int, protocol: str, probe: bytes) -> tuple[int, int]:
    """(the probe's checksum, scapy's checksum of the same packet with the field cleared)."""
    source, destination = SOURCES[version]
    number = NUMBERS[(version, protocol)]
    layer = IP(src=source, dst=destination, proto=number) if version == 4 else IPv6(src=source, dst=destination, nh=number)
    packet = (IP if version == 4 else IPv6)(bytes(layer / Raw(probe)))
    transport = packet.payload
    field = "cksum" if version == 6 and protocol == "icmp" else "chksum"
    carried = int(getattr(transport, field))
    delattr(transport, field)
    rebuilt = (IP if version == 4 else IPv6)(bytes(packet))
    return carried, int(getattr(rebuilt.payload, field))


@pytest.mark.parametrize("version", (4, 6))
@pytest.mark.parametrize("protocol", ("icmp", "udp", "tcp"))
def test_every_probe_carries_a_correct_checksum(version: int, protocol: str) -> None:
    for identity in (1, 2, 255, 256, 0x7FFF, 0x8000, 0xABCD, 0xFFFE):
        carried, correct = recomputed_checksum(version, protocol, build_probe(flow(version, protocol), identity))
        assert carried == correct, (identity, hex(carried), hex(correct))


@pytest.mark.parametrize("version", (4, 6))
def test_a_flow_keeps_what_load_balancers_hash_on(version: int) -> None:
    icmp = [build_probe(flow(version, "icmp"), identity) for identity in (1, 500, 0xFFFE)]
    assert {probe[:4] for probe in icmp} == {bytes([8 if version == 4 else 128, 0, 0x12, 0x34])}  # type, code, checksum
    assert len({probe[6:8] for probe in icmp}) == 3  # the sequence number carries the identity
    udp = [build_probe(flow(version, "udp"), identity) for identity in (1, 500, 0xFFFE)]
    assert {probe[:4] for probe in udp} == {(40_000).to_bytes(2, "big") + (33434).to_bytes(2, "big")}
    assert [int.from_bytes(probe[6:8], "big") for probe in udp] == [1, 500, 0xFFFE]  # the checksum is the identity
    tcp = [TCP(build_probe(flow(version, "tcp"), identity)) for identity in (1, 500)]
    assert [(t.sport, t.dport, t.seq, str(t.flags)) for t in tcp] == [
        (40_000, 33434, 0xBEEF0001, "S"), (40_000, 33434, 0xBEEF01F4, "S")]


def test_identities_outside_16_bits_less_the_reserved_are_refused() -> None:
    for identity in (0, 0xFFFF, 0x10000):
        with pytest.raises(ValueError):
            build_probe(flow(4, "udp"), identity)


def time_exceeded(version: int, protocol: str, identity: int, quote_bytes: int | None = None) -> bytes:
    quoted = sent_packet(version, protocol, identity)
    if quote_bytes is not None:
        quoted = quoted[: (20 if version == 4 else 40) + quote_bytes]
    if version == 4:
        return bytes(IP(src="198.18.0.6", dst="198.18.0.1") / ICMP(type=11, code=0) / Raw(quoted))
    return bytes(ICMPv6TimeExceeded() / Raw(quoted))


@pytest.mark.parametrize("version", (4, 6))
@pytest.mark.parametrize("protocol", ("icmp", "udp", "tcp"))
def test_a_time_exceeded_names_the_probe_it_quotes(version: int, protocol: str) -> None:
    responder = "198.18.0.6" if version == 4 else "2001:2:0:1::2"
    for quote_bytes in (None, 8):  # routers must quote 8 bytes of the probe (RFC 792); most quote more
        reply = parse_icmp(version, time_exceeded(version, protocol, 4242, quote_bytes), responder)
        assert reply == Reply(responder, "time_exceeded", protocol, SOURCES[version][1], 40_000,  # type: ignore[arg-type]
                              0 if protocol == "icmp" else 33434, 4242)


def test_unreachables_carry_their_code() -> None:
    quoted = sent_packet(4, "udp", 7)
    for code, name in ((3, "port"), (1, "host"), (0, "network"), (13, "prohibited"), (5, "code_5")):
        packet = bytes(IP(src="198.18.0.14", dst="198.18.0.1") / ICMP(type=3, code=code) / Raw(quoted))
        reply = parse_icmp(4, packet, "")
        assert reply is not None and reply.kind == "unreachable" and reply.unreachable == name and reply.identity == 7
    quoted6 = sent_packet(6, "udp", 9)
    for code, name in ((4, "port"), (1, "prohibited"), (3, "host")):
        reply = parse_icmp(6, bytes(ICMPv6DestUnreach(code=code) / Raw(quoted6)), "2001:2:0:3::2")
        assert reply is not None and reply.unreachable == name and reply.identity == 9


def test_echo_replies_name_their_probe() -> None:
    four = bytes(IP(src="198.18.0.14", dst="198.18.0.1") / ICMP(type=0, id=40_000, seq=321) / b"x")
    assert parse_icmp(4, four, "") == Reply("198.18.0.14", "echo_reply", "icmp", "198.18.0.14", 40_000, 0, 321)
    six = bytes(ICMPv6EchoReply(id=40_000, seq=321) / b"x")
    assert parse_icmp(6, six, "2001:2:0:3::2") == Reply("2001:2:0:3::2", "echo_reply", "icmp", "2001:2:0:3::2", 40_000, 0, 321)


def test_what_answers_no_probe_is_ignored() -> None:
    assert parse_icmp(4, bytes(IP() / ICMP(type=8)), "") is None  # a request, not a reply
    assert parse_icmp(6, bytes(ICMPv6EchoRequest()), "2001:2::1") is None
    assert parse_icmp(4, b"\x45\x00", "") is None  # a runt
    assert parse_icmp(6, b"\x03\x00\x00\x00", "2001:2::1") is None
    # a time exceeded quoting something that is not a probe (GRE)
    other = bytes(IP(src="198.18.0.6") / ICMP(type=11) / Raw(bytes(IP(proto=47, dst="198.18.0.14")) + b"\0" * 8))
    assert parse_icmp(4, other, "") is None
    # a quote shorter than the 8 transport bytes every router must send
    assert parse_icmp(4, time_exceeded(4, "udp", 1, quote_bytes=4), "") is None


@pytest.mark.parametrize("version", (4, 6))
def test_syn_ack_and_rst_from_the_destination_name_the_probe(version: int) -> None:
    source, destination = SOURCES[version]
    for flags in ("SA", "RA"):
        segment = TCP(sport=33434, dport=40_000, flags=flags, seq=77, ack=0xBEEF0000 + 4242 + 1)
        if version == 4:
            data, responder = bytes(IP(src=destination, dst=source) / segment), ""
        else:
            data, responder = bytes(IPv6(src=destination, dst=source) / segment)[40:], destination
        assert parse_tcp(version, data, responder) == Reply(destination, "tcp", "tcp", destination, 40_000, 33434, 4242)
    plain = TCP(sport=33434, dport=40_000, flags="S", seq=1)  # a SYN acknowledges nothing
    assert parse_tcp(4, bytes(IP(src=destination if version == 4 else "198.18.0.14") / plain), "") is None


def mpls_extension(labels: list[int]) -> bytes:
    stack = [MPLS(label=label, s=int(i == len(labels) - 1), ttl=1) for i, label in enumerate(labels)]
    return bytes(ICMPExtension_Header() / ICMPExtension_MPLS(stack=stack))


@pytest.mark.parametrize("compliant", (True, False))
def test_mpls_labels_of_an_rfc_4950_extension(compliant: bool) -> None:
    quoted = sent_packet(4, "udp", 99).ljust(128, b"\0")
    message = bytearray(bytes(ICMP(type=11, code=0) / Raw(quoted + mpls_extension([16001, 24]))))
    message[5] = 128 // 4 if compliant else 0  # RFC 4884 length; older routers give none and put it at 128
    message[2:4] = b"\0\0"
    message[2:4] = checksum(bytes(message)).to_bytes(2, "big")
    packet = bytes(IP(src="198.18.0.6", dst="198.18.0.1", proto=1)) + bytes(message)
    reply = parse_icmp(4, packet, "")
    assert reply is not None and reply.identity == 99 and reply.mpls == (16001, 24)


def test_mpls_labels_in_icmpv6() -> None:
    quoted = sent_packet(6, "udp", 5).ljust(128, b"\0")
    message = bytearray(bytes(ICMPv6TimeExceeded()) [:8] + quoted + mpls_extension([300]))
    message[4] = 128 // 8  # ICMPv6 counts the quote in 64-bit words
    reply = parse_icmp(6, bytes(message), "2001:2:0:1::2")
    assert reply is not None and reply.identity == 5 and reply.mpls == (300,)


def test_no_extension_without_room_for_one() -> None:
    reply = parse_icmp(4, time_exceeded(4, "udp", 3), "")
    assert reply is not None and reply.mpls == ()
    assert UDP  # the layer scapy dissects quoted datagrams with stays bound
