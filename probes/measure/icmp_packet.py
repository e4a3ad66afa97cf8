"""ICMP and ICMPv6 echo messages (RFC 792, RFC 4443 §4): build requests, parse replies. Pure functions."""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "ECHO_REQUEST", "ECHO_REPLY", "Echo", "checksum", "ones_complement_sum", "build_echo_request", "parse_echo_reply",
    "parse_looped_request",
]

#: (request, reply) message types per IP version
ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}

_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
_LENGTH = struct.Struct("!H")  # an IP header's length field


@dataclass(frozen=True, slots=True)
class Echo:
    """An echo reply's identifier, sequence number and payload."""

    identifier: int
    sequence: int
    payload: bytes


def ones_complement_sum(data: bytes) -> int:
    """The 16-bit one's complement sum of `data` (RFC 1071 §1), an odd last byte padded with zero."""
    if len(data) % 2:
        data += b"\0"
    return _fold(sum(struct.unpack(f"!{len(data) // 2}H", data)))


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`: one's complement of the one's complement sum."""
    return ~ones_complement_sum(data) & 0xFFFF


def build_echo_request(version: int, identifier: int, sequence: int, payload: bytes, payload_sum: int | None = None) -> bytes:
    """An echo request. ICMPv6's checksum covers a pseudo-header the kernel knows, so it fills it in.

    `payload_sum`: `ones_complement_sum(payload)`, for a sender repeating one payload; the sum is
    associative (RFC 1071 §2), so the header's words are added to it instead of summing the packet again.
    """
    message_type = ECHO_REQUEST[version]
    identifier, sequence = identifier & 0xFFFF, sequence & 0xFFFF
    if version == 6:
        return _HEADER.pack(message_type, 0, 0, identifier, sequence) + payload
    if payload_sum is None:
        payload_sum = ones_complement_sum(payload)
    total = _fold(payload_sum + (message_type << 8) + identifier + sequence)  # the code byte is 0
    return _HEADER.pack(message_type, 0, ~total & 0xFFFF, identifier, sequence) + payload


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
    # Offsets into `data`, not slices of it: most offsets fail at the version nibble, and a slice at each
    # would copy the packet a dozen times for every send timestamp read.
    size = len(data)
    for offset in range(min(size, 65)):
        rest = size - offset
        if rest < (20 if version == 4 else 40) + _HEADER.size or data[offset] >> 4 != version:
            continue
        if version == 4 and _LENGTH.unpack_from(data, offset + 2)[0] == rest:
            start = offset + (data[offset] & 0x0F) * 4
        elif version == 6 and _LENGTH.unpack_from(data, offset + 4)[0] == rest - 40 and data[offset + 6] == 58:
            start = offset + 40
        else:
            continue
        if start + _HEADER.size > size:
            continue
        message_type, _, _, identifier, sequence = _HEADER.unpack_from(data, start)
        if message_type == ECHO_REQUEST[version]:
            return Echo(identifier, sequence, data[start + _HEADER.size :])
    return None
