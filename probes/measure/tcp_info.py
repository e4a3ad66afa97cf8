"""The few TCP_INFO fields throughput tests report, read from a connected socket (Linux only).

Offsets follow `struct tcp_info` in linux/include/uapi/linux/tcp.h: eight one-byte fields, then 24
u32 fields (tcpi_rto ... tcpi_total_retrans), then u64 pacing rates and byte counters. Older kernels
return a shorter struct; a field beyond what the kernel gave reads as None.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

__all__ = ["TcpInfo", "tcp_info", "parse_tcp_info", "INFINITE_SSTHRESH"]

# tcp_info holds 0x7fffffff in snd_ssthresh until the first congestion event ends slow start
INFINITE_SSTHRESH = 0x7FFFFFFF
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_READ_BYTES = 232
# (name, struct format, offset)
_FIELDS = (
    ("snd_mss", "I", 16),
    ("sacked", "I", 28),
    ("rtt_us", "I", 68),
    ("snd_ssthresh", "I", 76),
    ("snd_cwnd", "I", 80),
    ("rcv_rtt_us", "I", 92),
    ("total_retrans", "I", 100),
    ("bytes_acked", "Q", 120),
    ("bytes_received", "Q", 128),
)


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """What one getsockopt(TCP_INFO) said; RTTs in microseconds as the kernel keeps them."""

    snd_mss: int
    sacked: int  # segments the receiver holds out of order (SACKed), not yet cumulatively acknowledged
    rtt_us: int
    snd_ssthresh: int
    snd_cwnd: int
    rcv_rtt_us: int
    total_retrans: int
    bytes_acked: int
    bytes_received: int

    @property
    def delivered_bytes(self) -> int:
        """Bytes the receiver has: cumulatively acknowledged plus SACKed (full segments, so exact for bulk)."""
        return self.bytes_acked + self.sacked * self.snd_mss

    @property
    def in_slow_start(self) -> bool:
        """True until the first congestion event set a slow-start threshold."""
        return self.snd_ssthresh >= INFINITE_SSTHRESH


def parse_tcp_info(raw: bytes) -> TcpInfo | None:
    """The fields above from the raw struct, or None when the kernel's struct is too short for them."""
    values: dict[str, int] = {}
    for name, form, offset in _FIELDS:
        if offset + struct.calcsize(form) > len(raw):
            return None
        (values[name],) = struct.unpack_from("=" + form, raw, offset)
    return TcpInfo(**values)


def tcp_info(sock: socket.socket) -> TcpInfo | None:
    """TCP_INFO of a connected socket, or None where the platform or a closed socket gives none."""
    try:
        return parse_tcp_info(sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _READ_BYTES))
    except OSError:
        return None
