"""STAMP test packets (RFC 8762), unauthenticated and authenticated: the layouts both ends share, and the
host facts both ends put in them (clock state for the Error Estimate, the TTL a packet arrived with).

Session-Sender packet (RFC 8762 §4.2.1), 44 bytes before any padding:

    0  Sequence Number (4)       4  Timestamp T1 (8)      12  Error Estimate (2)
    14 SSID (2)                  16 MBZ (28)

Session-Reflector packet (RFC 8762 §4.3.1), 44 bytes before any padding:

    0  Sequence Number (4)       4  Timestamp T3 (8)      12  Error Estimate (2)
    14 SSID (2)                  16 Receive Timestamp T2 (8)
    24 Session-Sender Sequence Number (4)                 28  Session-Sender Timestamp T1 (8)
    36 Session-Sender Error Estimate (2)                  38  MBZ (2)
    40 Session-Sender TTL (1)    41 MBZ (3)

Authenticated mode (RFC 8762 §4.2.2 sender, §4.3.2 reflector), 112 bytes before any padding: the same
fields, spread out with MBZ octets, and an HMAC over the first 96 bytes in bytes 96-111:

    sender     0 Sequence (4)  16 T1 (8)  24 Error Estimate (2)  26 SSID (2)  96 HMAC (16)
    reflector  0 Sequence (4)  16 T3 (8)  24 Error Estimate (2)  26 SSID (2)  32 T2 (8)
               48 Session-Sender Sequence (4)  64 Session-Sender T1 (8)  72 Session-Sender Error Estimate (2)
               80 Session-Sender TTL (1)  96 HMAC (16)

The HMAC is HMAC-SHA-256 truncated to its first 16 bytes (RFC 8762 §4.4, as RFC 4868 uses it), keyed
with the key both ends share (its distribution is outside STAMP; ours is a file on each end). A packet
whose HMAC does not verify is discarded before any field is used. The HMAC is written after the
transmit timestamp, so that is the last step before the send here.

Bytes 14-15 are MBZ in RFC 8762; RFC 8972 §3 names them the Session-Sender Identifier (SSID), which a
reflector copies back. We send 0 there (plain RFC 8762), and the reflector copies what it got.

Packets are symmetrical (RFC 8762 §4): the reflector answers with exactly as many bytes as it received,
so the sender's padding sets the size both ways; padding travels as zeros.

Timestamps are the NTP 64-bit format (RFC 5905 §6: seconds since 1900 and a 32-bit binary fraction)
when the Error Estimate's Z bit is 0; Z = 1 marks PTPv2 truncated timestamps (RFC 8186 §2.3, seconds
and nanoseconds since the PTP epoch), which we decode but never send.

The Error Estimate (RFC 4656 §4.1.2): S (1 bit, clock synchronized to UTC by an external source),
Z (1 bit, timestamp format), Scale (6 bits), Multiplier (8 bits, never 0); the error is
Multiplier × 2^(Scale − 32) seconds.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import math
import socket
import struct
from dataclasses import dataclass

__all__ = [
    "PACKET_BYTES",
    "AUTHENTICATED_PACKET_BYTES",
    "packet_bytes",
    "NTP_UNIX_OFFSET_SECONDS",
    "ErrorEstimate",
    "SenderPacket",
    "ReflectorPacket",
    "ntp_from_ns",
    "ns_from_ntp",
    "ns_from_ptp",
    "ns_from_timestamp",
    "build_sender_packet",
    "parse_sender_packet",
    "build_reflector_packet",
    "parse_reflector_packet",
    "stamp_timestamp",
    "local_error_estimate",
    "enable_receive_ttl",
    "received_ttl",
    "seal",
    "verify",
    "timestamp_offset",
]

#: Size of both unauthenticated packets without padding (RFC 8762 §4.2.1, §4.3.1); a shorter one is malformed.
PACKET_BYTES = 44
#: Size of both authenticated packets without padding (RFC 8762 §4.2.2, §4.3.2).
AUTHENTICATED_PACKET_BYTES = 112
#: Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
NTP_UNIX_OFFSET_SECONDS = 2_208_988_800

_SENDER = struct.Struct("!IQHH28x")
_REFLECTOR = struct.Struct("!IQHHQIQH2xB3x")
_SENDER_AUTHENTICATED = struct.Struct("!I12xQHH")
_REFLECTOR_AUTHENTICATED = struct.Struct("!I12xQHH4xQ8xI12xQH6xB")
_HMAC_OFFSET = 96
_HMAC_BYTES = 16
_TIMESTAMP = struct.Struct("!Q")
_ERA_SECONDS = 1 << 32
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ErrorEstimate:
    """RFC 4656 §4.1.2 Error Estimate: synchronization (S), timestamp format (Z), scale and multiplier."""

    synchronized: bool
    scale: int
    multiplier: int
    ptp_format: bool = False  # the Z bit: timestamps are PTPv2 truncated, not NTP

    def __post_init__(self) -> None:
        if not 0 <= self.scale <= 63:
            raise ValueError(f"scale is 6 bits (0..63), got {self.scale}")
        if not 1 <= self.multiplier <= 255:
            raise ValueError(f"multiplier is 1..255 (0 is forbidden by RFC 4656), got {self.multiplier}")

    @property
    def seconds(self) -> float:
        """The error estimate in seconds: Multiplier × 2^(Scale − 32)."""
        return math.ldexp(self.multiplier, self.scale - 32)

    @classmethod
    def from_seconds(cls, seconds: float, synchronized: bool) -> ErrorEstimate:
        """The smallest encodable estimate ≥ `seconds` (an estimate is rounded up, never down)."""
        if not seconds > 0:  # also NaN: the smallest estimate there is
            return cls(synchronized, 0, 1)
        for scale in range(64):
            multiplier = math.ceil(math.ldexp(seconds, 32 - scale))
            if multiplier <= 255:
                return cls(synchronized, scale, max(1, multiplier))
        return cls(synchronized, 63, 255)  # beyond ~2^31 s: the largest there is

    def to_field(self) -> int:
        """The 16-bit field."""
        return (self.synchronized << 15) | (self.ptp_format << 14) | (self.scale << 8) | self.multiplier

    @classmethod
    def from_field(cls, value: int) -> ErrorEstimate | None:
        """Decode the 16-bit field; None when the multiplier is 0 (RFC 4656: a corrupt packet)."""
        if value & 0xFF == 0:
            return None
        return cls(bool(value >> 15), (value >> 8) & 0x3F, value & 0xFF, bool((value >> 14) & 1))


def ntp_from_ns(unix_ns: int) -> int:
    """NTP 64-bit timestamp of a UTC time in ns since the Unix epoch (the fraction rounded to nearest)."""
    seconds, nanoseconds = divmod(unix_ns, _NS)
    fraction = ((nanoseconds << 32) + _NS // 2) // _NS
    seconds += NTP_UNIX_OFFSET_SECONDS + (fraction >> 32)  # a fraction rounded up to a whole second
    return ((seconds % _ERA_SECONDS) << 32) | (fraction & 0xFFFFFFFF)


def ns_from_ntp(timestamp: int) -> int:
    """UTC ns since the Unix epoch of an NTP 64-bit timestamp.

    The era is inferred as RFC 4330 §3 suggests: with the top bit of the seconds set the time lies in
    1968-2036 (era 0), without it in 2036-2104 (era 1).
    """
    seconds, fraction = timestamp >> 32, timestamp & 0xFFFFFFFF
    if not seconds & 0x80000000:
        seconds += _ERA_SECONDS
    return (seconds - NTP_UNIX_OFFSET_SECONDS) * _NS + ((fraction * _NS + (1 << 31)) >> 32)


def ns_from_ptp(timestamp: int) -> int:
    """ns since the PTP epoch of a PTPv2 truncated timestamp (32-bit seconds, 32-bit nanoseconds)."""
    return (timestamp >> 32) * _NS + (timestamp & 0xFFFFFFFF)


def ns_from_timestamp(timestamp: int, estimate: ErrorEstimate) -> int:
    """A timestamp in ns since its epoch, in the format the packet's Error Estimate (Z bit) names."""
    return ns_from_ptp(timestamp) if estimate.ptp_format else ns_from_ntp(timestamp)


def packet_bytes(key: bytes | None) -> int:
    """The smallest packet of the mode: 44 bytes unauthenticated (`key` None), 112 authenticated."""
    return PACKET_BYTES if key is None else AUTHENTICATED_PACKET_BYTES


def timestamp_offset(key: bytes | None) -> int:
    """Where the transmit timestamp (T1 or T3) sits in either packet of the mode."""
    return 4 if key is None else 16


def stamp_timestamp(packet: bytearray, key: bytes | None, unix_ns: int) -> None:
    """Write the transmit timestamp into a built packet in place and, authenticated, its HMAC: the
    last step before it is sent."""
    _TIMESTAMP.pack_into(packet, timestamp_offset(key), ntp_from_ns(unix_ns))
    if key is not None:
        seal(packet, key)


def _digest(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    return hmac.digest(key, data[:_HMAC_OFFSET], hashlib.sha256)[:_HMAC_BYTES]


def seal(packet: bytearray, key: bytes) -> None:
    """Write the HMAC of an authenticated packet (RFC 8762 §4.4) over its first 96 bytes."""
    packet[_HMAC_OFFSET:_HMAC_OFFSET + _HMAC_BYTES] = _digest(packet, key)


def verify(data: bytes, key: bytes) -> bool:
    """Whether an authenticated packet is at least 112 bytes and its HMAC is the one `key` gives
    (compared in constant time)."""
    return (len(data) >= AUTHENTICATED_PACKET_BYTES
            and hmac.compare_digest(data[_HMAC_OFFSET:_HMAC_OFFSET + _HMAC_BYTES], _digest(data, key)))


@dataclass(frozen=True, slots=True)
class SenderPacket:
    """A Session-Sender test packet (RFC 8762 §4.2.1); `timestamp` is the raw 64-bit field."""

    sequence: int
    timestamp: int
    error_estimate: ErrorEstimate
    ssid: int
    size: int  # bytes on the wire (UDP payload), padding included


@dataclass(frozen=True, slots=True)
class ReflectorPacket:
    """A Session-Reflector test packet (RFC 8762 §4.3.1); timestamps are the raw 64-bit fields."""

    sequence: int
    timestamp: int  # T3, when the reflector sent it
    error_estimate: ErrorEstimate
    ssid: int
    receive_timestamp: int  # T2, when the reflector received the sender's packet
    sender_sequence: int
    sender_timestamp: int  # T1, copied from the sender's packet
    sender_error_estimate: ErrorEstimate
    sender_ttl: int  # TTL / hop limit the sender's packet arrived with
    size: int


def build_sender_packet(sequence: int, unix_ns: int, estimate: ErrorEstimate, size: int | None = None,
                        ssid: int = 0, key: bytes | None = None) -> bytearray:
    """A Session-Sender packet of `size` bytes (at least the mode's base packet, zero padding), authenticated
    when a `key` is given; mutable, for `stamp_timestamp` (which writes the HMAC) right before the send."""
    base = packet_bytes(key)
    size = base if size is None else size
    if size < base:
        raise ValueError(f"a{'n authenticated' if key is not None else ''} STAMP packet is at least {base} bytes, got {size}")
    packet = bytearray(size)
    layout = _SENDER if key is None else _SENDER_AUTHENTICATED
    layout.pack_into(packet, 0, sequence & 0xFFFFFFFF, ntp_from_ns(unix_ns), estimate.to_field(), ssid)
    if key is not None:
        seal(packet, key)
    return packet


def parse_sender_packet(data: bytes, key: bytes | None = None) -> SenderPacket | None:
    """The Session-Sender packet in `data`; None when it is shorter than the mode's base packet, its HMAC
    does not verify (authenticated, `key` given) or its estimate is corrupt."""
    if key is None and len(data) < PACKET_BYTES or key is not None and not verify(data, key):
        return None
    sequence, timestamp, field, ssid = (_SENDER if key is None else _SENDER_AUTHENTICATED).unpack_from(data)
    estimate = ErrorEstimate.from_field(field)
    if estimate is None:
        return None
    return SenderPacket(sequence, timestamp, estimate, ssid, len(data))


def build_reflector_packet(received: bytes, receive_ns: int, ttl: int, estimate: ErrorEstimate,
                           transmit_ns: int | None = None, key: bytes | None = None) -> bytearray | None:
    """The stateless reflection (RFC 8762 §4.3, §4.3.1, §4.3.2) of a received sender packet: same size,
    its sequence number reused, its sequence, timestamp, error estimate, SSID and arrival TTL copied, T2 =
    `receive_ns`. T3 is `transmit_ns`, or 0 until `stamp_timestamp` writes it (and, authenticated, the
    HMAC) right before the send.
    None for a packet shorter than the mode's base packet (the answer is never larger than what was
    received), for one whose HMAC does not verify (authenticated), and for one whose Error Estimate has
    a zero multiplier (RFC 4656 §4.1.2: corrupt, to be discarded).
    """
    sender = parse_sender_packet(received, key)
    if sender is None:
        return None
    reply = bytearray(len(received))
    layout = _REFLECTOR if key is None else _REFLECTOR_AUTHENTICATED
    layout.pack_into(
        reply, 0, sender.sequence, 0 if transmit_ns is None else ntp_from_ns(transmit_ns), estimate.to_field(),
        sender.ssid, ntp_from_ns(receive_ns), sender.sequence, sender.timestamp, sender.error_estimate.to_field(),
        ttl & 0xFF,
    )
    if key is not None and transmit_ns is not None:  # else `stamp_timestamp` signs it, once, with T3
        seal(reply, key)
    return reply


def parse_reflector_packet(data: bytes, key: bytes | None = None) -> ReflectorPacket | None:
    """The Session-Reflector packet in `data`; None when it is shorter than the mode's base packet, its
    HMAC does not verify (authenticated, `key` given) or an estimate is corrupt."""
    if key is None and len(data) < PACKET_BYTES or key is not None and not verify(data, key):
        return None
    sequence, timestamp, field, ssid, receive, sender_sequence, sender_timestamp, sender_field, ttl = (
        (_REFLECTOR if key is None else _REFLECTOR_AUTHENTICATED).unpack_from(data)
    )
    estimate = ErrorEstimate.from_field(field)
    sender_estimate = ErrorEstimate.from_field(sender_field)
    if estimate is None or sender_estimate is None:
        return None
    return ReflectorPacket(sequence, timestamp, estimate, ssid, receive, sender_sequence, sender_timestamp,
                           sender_estimate, ttl, len(data))


# struct timex (linux/timex.h) on 64-bit Linux: modes (int, padded to 8), offset, freq, maxerror,
# esterror (longs), status (int). adjtimex() with modes = 0 only reads, and needs no privilege.
_TIMEX_BYTES = 512  # the struct is 208 bytes; room to spare
_TIMEX_HEAD = struct.Struct("=I4xqqqqi")
_STA_UNSYNC = 0x0040
_TIME_ERROR = 5
_UNKNOWN_ERROR_SECONDS = 16.0  # what the kernel itself reports (NTP_PHASE_LIMIT) for a clock never synchronized


def local_error_estimate() -> ErrorEstimate:
    """The Error Estimate this host's clock can truthfully claim, from the kernel's NTP state (adjtimex).

    S is set only when the kernel says the clock is synchronized (a time daemon disciplines it); the
    error is the kernel's maximum error bound, which it grows by 500 ppm while no daemon updates it.
    Where adjtimex is unavailable, S = 0 and the error is 16 s, as the kernel reports for an unsynchronized clock.
    """
    buffer = ctypes.create_string_buffer(_TIMEX_BYTES)
    try:
        if struct.calcsize("l") != 8:
            raise OSError("struct timex layout known for 64-bit Linux only")
        state = ctypes.CDLL(None, use_errno=True).adjtimex(buffer)
    except (OSError, AttributeError):
        return ErrorEstimate.from_seconds(_UNKNOWN_ERROR_SECONDS, synchronized=False)
    if state < 0:
        return ErrorEstimate.from_seconds(_UNKNOWN_ERROR_SECONDS, synchronized=False)
    _, _, _, max_error_us, _, status = _TIMEX_HEAD.unpack_from(buffer.raw)
    synchronized = state != _TIME_ERROR and not status & _STA_UNSYNC
    return ErrorEstimate.from_seconds(max_error_us / 1e6, synchronized)


# Linux value (include/uapi/linux/in.h): Python exports IP_TTL but not IP_RECVTTL.
_IP_RECVTTL = 12


def enable_receive_ttl(sock: socket.socket) -> None:
    """Ask the kernel to hand over each datagram's TTL (IPv4) or hop limit (IPv6), read by `received_ttl`."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, _IP_RECVTTL, 1)


def received_ttl(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The TTL (IP_TTL) or hop limit (IPV6_HOPLIMIT) of a received datagram, from its ancillary data."""
    for level, kind, data in ancillary:
        if len(data) >= 4 and ((level == socket.IPPROTO_IP and kind == socket.IP_TTL)
                               or (level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT)):
            return int(struct.unpack("=i", data[:4])[0])
    return None
