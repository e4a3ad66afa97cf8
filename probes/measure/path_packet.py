"""The packets of a traced path: probes built and replies dissected with scapy. Pure functions, no I/O.

A probe is what the raw socket sends after the IP header the kernel writes: an ICMP echo request, a UDP
datagram or a TCP SYN. Each flow keeps constant every field that per-flow load balancers hash on
(Paris traceroute): addresses, protocol, ports, and for ICMP the type, code and checksum, the first
four bytes that stand where ports stand in UDP and TCP. A probe's identity, which tells its reply from
every other, travels in a field that is quoted back in the first eight bytes of the ICMP error and is
hashed by nobody: the UDP checksum (the payload's first two bytes are set so that the checksum comes
out as the identity), the ICMP sequence number (the same two bytes keep the ICMP checksum constant),
or the low 16 bits of the TCP sequence number.

Replies: ICMP time exceeded and destination unreachable, which quote the probe (RFC 792, RFC 4443),
with the MPLS label stack a router adds as an RFC 4884 / RFC 4950 extension; ICMP echo replies; and
the destination's SYN-ACK or RST to a TCP probe.
"""

from __future__ import annotations

import functools
import logging
import struct
from dataclasses import dataclass
from typing import Literal

# scapy costs about 0.35 s and 30 MB to import: only probes that trace paths load this module. Its
# import-time warnings (routes it cannot find for its own sending, which is not used) say nothing to us.
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.contrib.mpls import MPLS, ICMPExtension_MPLS
from scapy.layers.inet import ICMP, IP, TCP, UDP, ICMPExtension_Header, IPerror
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPerror6,
    IPv6,
)
from scapy.packet import Packet

__all__ = ["Flow", "Reply", "build_probe", "parse_icmp", "parse_tcp", "PAYLOAD_BYTES"]

Protocol = Literal["icmp", "udp", "tcp"]
ReplyKind = Literal["time_exceeded", "unreachable", "echo_reply", "tcp"]

#: bytes after the transport header: the two bytes that set the checksum, then a recognisable pattern
PAYLOAD_BYTES = 32
_FILLER = b"qiancheng path probe".ljust(PAYLOAD_BYTES - 2, b"\0")
_TCP_WINDOW = 64_240
_IP_PROTOCOLS = {"icmp": (1, 58), "udp": (17, 17), "tcp": (6, 6)}

# destination unreachable codes (RFC 792 and RFC 1812; RFC 4443 §3.1) by the names results use
_UNREACHABLE_V4 = {0: "network", 1: "host", 2: "protocol", 3: "port", 4: "fragmentation", 9: "prohibited",
                   10: "prohibited", 13: "prohibited"}
_UNREACHABLE_V6 = {0: "network", 1: "prohibited", 3: "host", 4: "port", 5: "prohibited", 6: "prohibited"}
# RFC 4884: where the quoted datagram ends when the router gives no length (RFC 4950 before RFC 4884)
_COMPAT_QUOTE_BYTES = 128
_PAYLOAD_OFFSET = 8  # the payload follows an 8-byte UDP or ICMP header


@dataclass(frozen=True, slots=True)
class Flow:
    """What stays constant for every probe of one flow. For ICMP, `source_port` is the echo identifier
    and `icmp_checksum` the checksum every probe of the flow carries; `destination_port` is unused."""

    protocol: Protocol
    version: int
    source: str
    destination: str
    source_port: int
    destination_port: int = 0
    icmp_checksum: int = 0x5A5A
    tcp_sequence_high: int = 0  # the high 16 bits of every TCP probe's sequence number


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer to a probe: who sent it, what it says, and what identifies the flow and the probe."""

    responder: str
    kind: ReplyKind
    protocol: Protocol
    destination: str  # where the probe was going
    source_port: int  # the flow's key: UDP or TCP source port, or ICMP echo identifier
    destination_port: int
    identity: int
    unreachable: str | None = None  # the code's name when kind is "unreachable"
    mpls: tuple[int, ...] = ()


def _ones_complement_add(a: int, b: int) -> int:
    total = a + b
    return (total & 0xFFFF) + (total >> 16)


def _compensation(current_checksum: int, wanted_checksum: int) -> int:
    """The 16-bit word that, put in place of a zero word, turns `current_checksum` into `wanted_checksum`.

    A checksum is the complement of the one's complement sum: the sum must move from ~current to
    ~wanted, so the word to add is ~wanted - ~current, that is ~wanted + current in one's complement.
    """
    word = _ones_complement_add(~wanted_checksum & 0xFFFF, current_checksum)
    return _ones_complement_add(word & 0xFFFF, word >> 16) & 0xFFFF


def _patched(template: bytes, checksum_offset: int, patches: tuple[tuple[int, int], ...], wanted: int | None) -> bytes:
    """`template` with 16-bit words put at the (offset, value) `patches` (zero in the template), and its
    checksum updated to match; with `wanted`, the payload's first word (zero in the template) is then
    set so that the checksum comes out as `wanted` (RFC 1624's incremental update, in its own terms)."""
    packet = bytearray(template)
    total = ~int.from_bytes(template[checksum_offset : checksum_offset + 2], "big") & 0xFFFF
    for offset, value in patches:
        packet[offset : offset + 2] = value.to_bytes(2, "big")
        total = _ones_complement_add(total, value)
    checksum = ~total & 0xFFFF
    if wanted is not None:
        word = _compensation(checksum, wanted)
        packet[_PAYLOAD_OFFSET : _PAYLOAD_OFFSET + 2] = word.to_bytes(2, "big")
        checksum = wanted
    packet[checksum_offset : checksum_offset + 2] = checksum.to_bytes(2, "big")
    return bytes(packet)


def _network_layer(flow: Flow) -> Packet:
    return IP(src=flow.source, dst=flow.destination) if flow.version == 4 else IPv6(src=flow.source, dst=flow.destination)


@functools.lru_cache(maxsize=64)
def _template(flow: Flow) -> bytes:
    """The flow's probe with a zero identity and a zero compensation word, as scapy builds it."""
    header_bytes = 20 if flow.version == 4 else 40
    payload = b"\0\0" + _FILLER
    if flow.protocol == "udp":
        return bytes(_network_layer(flow) / UDP(sport=flow.source_port, dport=flow.destination_port) / payload)[header_bytes:]
    if flow.protocol == "tcp":
        syn = TCP(sport=flow.source_port, dport=flow.destination_port, flags="S", window=_TCP_WINDOW,
                  seq=flow.tcp_sequence_high << 16, options=[("MSS", 1460)])
        return bytes(_network_layer(flow) / syn)[header_bytes:]
    if flow.version == 4:
        return bytes(ICMP(type=8, id=flow.source_port, seq=0) / payload)
    return bytes(_network_layer(flow) / ICMPv6EchoRequest(id=flow.source_port, seq=0) / payload)[header_bytes:]


def build_probe(flow: Flow, identity: int) -> bytes:
    """The transport header and payload of the probe `identity` (1..0xFFFE) of `flow`, checksum included.

    scapy builds each flow's probe once; a probe is that template with its identity and checksum
    patched in. IPv6 checksums cover the addresses (RFC 8200 §8.1), so the source must be the one the
    kernel will write: the caller binds the socket to it.
    """
    if not 0 < identity < 0xFFFF:
        raise ValueError(f"identity must be within 1..65534, got {identity}")
    template = _template(flow)
    if flow.protocol == "udp":
        return _patched(template, 6, (), identity)
    if flow.protocol == "tcp":
        return _patched(template, 16, ((6, identity),), None)
    return _patched(template, 2, ((6, identity),), flow.icmp_checksum)


def parse_icmp(version: int, data: bytes, responder: str) -> Reply | None:
    """The reply in what a raw ICMP socket read (IPv4: from the IP header on; IPv6: from the ICMPv6
    header on, `responder` being the address it came from), or None for anything that answers no probe."""
    if version == 4:
        if len(data) < 28 or data[0] >> 4 != 4:
            return None
        header_bytes = (data[0] & 0x0F) * 4
        responder = ".".join(str(b) for b in data[12:16])
        message = data[header_bytes:]
        return _parse_icmp4(message, responder)
    return _parse_icmp6(data, responder)


def _parse_icmp4(message: bytes, responder: str) -> Reply | None:
    if len(message) < 8:
        return None
    message_type, code = message[0], message[1]
    if message_type == 0:
        echo = ICMP(message)
        return Reply(responder, "echo_reply", "icmp", responder, echo.id, 0, echo.seq)
    if message_type not in (3, 11):
        return None
    quote = message[8:]
    if len(quote) < 20 or quote[0] >> 4 != 4:
        return None
    header_bytes = (quote[0] & 0x0F) * 4
    quoted = IPerror(quote[:header_bytes])  # the header alone: scapy need not guess what follows it
    kind: ReplyKind = "time_exceeded" if message_type == 11 else "unreachable"
    unreachable = _UNREACHABLE_V4.get(code, f"code_{code}") if kind == "unreachable" else None
    return _quoted_probe(quote[header_bytes:], quoted.dst, quoted.proto, responder, kind, unreachable,
                         _mpls(message, message[5] * 4, 4))


def _parse_icmp6(message: bytes, responder: str) -> Reply | None:
    if len(message) < 8:
        return None
    message_type, code = message[0], message[1]
    if message_type == 129:
        echo = ICMPv6EchoReply(message)
        return Reply(responder, "echo_reply", "icmp", responder, echo.id, 0, echo.seq)
    if message_type not in (1, 3):
        return None
    quote = message[8:]
    if len(quote) < 40 or quote[0] >> 4 != 6:
        return None
    quoted = IPerror6(quote[:40])  # the fixed header alone (probes carry no extension headers)
    kind: ReplyKind = "time_exceeded" if message_type == 3 else "unreachable"
    unreachable = _UNREACHABLE_V6.get(code, f"code_{code}") if kind == "unreachable" else None
    return _quoted_probe(quote[40:], quoted.dst, quoted.nh, responder, kind, unreachable, _mpls(message, message[4] * 8, 6))


def _quoted_probe(transport: bytes, destination: str, protocol: int, responder: str, kind: ReplyKind,
                  unreachable: str | None, mpls: tuple[int, ...]) -> Reply | None:
    """The probe an ICMP error quotes, from its first eight transport bytes (all a router must quote)."""
    if len(transport) < 8:
        return None
    if protocol == 17:
        sport, dport, _, checksum = struct.unpack_from("!HHHH", transport)
        return Reply(responder, kind, "udp", destination, sport, dport, checksum, unreachable, mpls)
    if protocol == 6:
        sport, dport, sequence = struct.unpack_from("!HHI", transport)
        return Reply(responder, kind, "tcp", destination, sport, dport, sequence & 0xFFFF, unreachable, mpls)
    if protocol in (1, 58):
        message_type, _, _, identifier, sequence = struct.unpack_from("!BBHHH", transport)
        if message_type != (8 if protocol == 1 else 128):
            return None
        return Reply(responder, kind, "icmp", destination, identifier, 0, sequence, unreachable, mpls)
    return None


def _mpls(message: bytes, quoted_length: int, version: int) -> tuple[int, ...]:
    """The labels of an RFC 4950 MPLS label stack object in the message's RFC 4884 extension, if any.

    The extension follows the quoted datagram, whose length the router gives (RFC 4884 §4.1); a router
    that gives none but sends more than 128 bytes of quote puts the extension at byte 128 (§5).
    """
    start = 8 + quoted_length
    if quoted_length == 0:
        if len(message) < 8 + _COMPAT_QUOTE_BYTES + 8:
            return ()
        start = 8 + _COMPAT_QUOTE_BYTES
    elif quoted_length < _COMPAT_QUOTE_BYTES:
        return ()  # a compliant extension follows at least 128 bytes of quote
    extension = message[start:]
    if len(extension) < 8 or extension[0] >> 4 != 2:
        return ()
    labels: list[int] = []
    item = ICMPExtension_Header(extension).payload
    while isinstance(item, Packet) and item.name != "NoPayload":
        if isinstance(item, ICMPExtension_MPLS):
            for entry in item.stack:  # scapy chains the entries below the top one as its payload
                while isinstance(entry, MPLS):
                    labels.append(int(entry.label))
                    entry = entry.payload
        item = item.payload
    return tuple(labels)


def parse_tcp(version: int, data: bytes, responder: str) -> Reply | None:
    """The destination's answer to a TCP probe in what a raw TCP socket read (IPv4 from the IP header
    on), or None: only a SYN-ACK or a RST that acknowledges a probe's sequence number answers one."""
    if version == 4:
        if len(data) < 40 or data[0] >> 4 != 4:
            return None
        packet = IP(data)
        segment = packet.getlayer(TCP)
        responder = packet.src
    else:
        segment = TCP(data)
    if segment is None or not segment.flags.A or not (segment.flags.S or segment.flags.R):
        return None
    identity = (int(segment.ack) - 1) & 0xFFFF
    return Reply(responder, "tcp", "tcp", responder, int(segment.dport), int(segment.sport), identity)
