"""ICMP and ICMPv6 echo messages (RFC 792, RFC 4443 §4): build requests, parse replies. Pure functions."""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "ECHO_REQUEST", "ECHO_REPLY", "Echo", "checksum", "build_echo_request", "parse_echo_reply", "parse_looped_request",
]

#: (request, reply) message types per IP version
ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}

_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence


@dataclass(frozen=True, slots=True)
class Echo:
    """An echo reply's identifier, sequence number and payload."""

    identifier: int
    sequence: int
    payload: bytes


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`: one's complement of the one's complement sum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_echo_request(version: int, identifier: int, sequence: int, payload: bytes) -> bytes:
    """An echo request. ICMPv6's checksum covers a pseudo-header the kernel knows, so it fills it in."""
    message_type = ECHO_REQUEST[version]
    header = _HEADER.pack(message_type, 0, 0, identifier & 0xFFFF, sequence & 0xFFFF)
    if version == 6:
        return header + payload
    return _HEADER.pack(message_type, 0, checksum(header + payload), identifier & 0xFFFF, sequence & 0xFFFF) + payload


def parse_echo_reply(version: int, data: bytes, with_ip_header: bool) -> Echo | None:
    """The echo reply in `data`, or None for any other message (requests looped back, errors, runts).

    Raw IPv4 sockets deliver the IP header too; its length is read from the IHL field.
    """
    if with_ip_header:
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        data = data[(data[0] & 0x0F) * 4 :]
    if len(data) < _HEADER.size:
        return None
    message_type, code, _, identifier, sequence = _HEADER.unpack_from(data)
    if message_type != ECHO_REPLY[version] or code != 0:
        return None
    return Echo(identifier, sequence, data[_HEADER.size :])


def parse_looped_request(version: int, data: bytes) -> Echo | None:
    """The echo request in a packet the kernel hands back with its send timestamp (MSG_ERRQUEUE).

    That copy starts with the device's link-layer header, whose length depends on the device (14 bytes
    on Ethernet and loopback, none on a TUN device), so the IP header is found by its version nibble and
    a length field that matches the rest of the packet.
    """
    for offset in range(min(len(data), 65)):
        rest = data[offset:]
        if len(rest) < (20 if version == 4 else 40) + _HEADER.size or rest[0] >> 4 != version:
            continue
        if version == 4 and int.from_bytes(rest[2:4], "big") == len(rest):
            icmp = rest[(rest[0] & 0x0F) * 4 :]
        elif version == 6 and int.from_bytes(rest[4:6], "big") == len(rest) - 40 and rest[6] == 58:
            icmp = rest[40:]
        else:
            continue
        message_type, _, _, identifier, sequence = _HEADER.unpack_from(icmp)
        if message_type == ECHO_REQUEST[version]:
            return Echo(identifier, sequence, icmp[_HEADER.size :])
    return None
