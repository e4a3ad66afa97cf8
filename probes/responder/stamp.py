"""STAMP Session-Reflector (RFC 8762), stateless, on the responder's UDP sockets.

Mode. Without a shared secret the reflector runs in unauthenticated mode (§4.3.1). With one
(`secret_file`, core/responder_secret.py) it runs in authenticated mode (§4.3.2): it answers only
packets of at least 112 bytes whose HMAC the secret verifies (§4.4), checked before any field is read,
and signs its answers; every other packet is dropped and counted. So nobody without the secret can make
the reflector send anything, to themselves or to an address they spoof.

Stateless (RFC 8762 §4): no per-session state; each reply reuses the sender's sequence number, so a
sender measures round-trip loss only. Each reply has exactly the size of the packet it answers
(symmetrical packets, §4), and a packet shorter than the 44-byte base layout is dropped and counted:
the reflector never sends more bytes than it received, so it cannot amplify a spoofed flood. A packet
(112 bytes, authenticated) whose Error Estimate multiplier is 0 is corrupt (RFC 4656 §4.1.2) and is dropped and counted too.

Timing. T2 (receive) is the kernel's receive timestamp (SO_TIMESTAMPNS), falling back to a clock read
right after the read; T3 (transmit) is a clock read written into the reply as the last step before
`sendto()`, plus this socket's shortest recent send-path latency, learnt from the kernel's transmit
stamps of the previous replies (probes/responder/send_latency.py): so T3 is close to when the reply
leaves, never after it, rather than when the clock was read some 20-45 µs before. The Session-Sender TTL is the TTL (IPv4, IP_RECVTTL) or hop limit (IPv6,
IPV6_RECVHOPLIMIT) the sender's packet arrived with. The HMAC of an authenticated answer is computed after T3 is
written, and is part of the latency learnt. The Error Estimate states this host's clock
state as the kernel knows it (see `stamp_packet.local_error_estimate`), refreshed once a second.

Asyncio. The socket is read through `loop.add_reader` and `recvmsg()`: asyncio's datagram transports
drop the ancillary data that carries the timestamp and the TTL.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from qiancheng.core.addresses import enable_receive_timestamps, kernel_timestamp_ns
from qiancheng.core.clock import monotonic
from qiancheng.core.logs import kv
from qiancheng.core.responder_secret import SecretFile
from qiancheng.core.stamp_packet import (
    ErrorEstimate,
    build_reflector_packet,
    enable_receive_ttl,
    local_error_estimate,
    packet_bytes,
    received_ttl,
    stamp_timestamp,
    verify,
)

from .send_latency import SendLatency

__all__ = ["StampReflector"]

log = logging.getLogger("qiancheng.responder.stamp")

_ANCILLARY_BYTES = 256  # SCM_TIMESTAMPNS (16 bytes) and IP_TTL / IPV6_HOPLIMIT (4), with their headers
_MAX_DATAGRAM = 65_535
_READS_PER_WAKEUP = 64
_ESTIMATE_REFRESH_SECONDS = 1.0


class StampReflector:
    """The reflector on one bound UDP socket; counts what it reflected and what it dropped."""

    def __init__(self, sock: socket.socket, secret: SecretFile | None = None) -> None:
        self.sock = sock
        self.secret = secret  # authenticated mode with its key; None: unauthenticated
        self.reflected = 0
        self.dropped_short = 0  # shorter than the mode's base packet (44 or 112 bytes): never answered
        self.dropped_unauthenticated = 0  # authenticated mode: an HMAC that the secret does not verify
        self.dropped_corrupt = 0  # an Error Estimate multiplier of 0 (RFC 4656 §4.1.2): discarded
        self.send_errors = 0
        self._estimate = local_error_estimate()
        self._estimate_at = monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        enable_receive_timestamps(sock)
        enable_receive_ttl(sock)
        self.send_latency = SendLatency(sock)

    def start(self) -> None:
        """Begin answering on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def close(self) -> None:
        """Stop answering and close the socket."""
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()

    def _error_estimate(self) -> ErrorEstimate:
        now = monotonic()
        if now - self._estimate_at >= _ESTIMATE_REFRESH_SECONDS:
            self._estimate, self._estimate_at = local_error_estimate(), now
        return self._estimate

    def _on_readable(self) -> None:
        self.send_latency.drain()
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, ancillary, _, source = self.sock.recvmsg(_MAX_DATAGRAM, _ANCILLARY_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error for an earlier reply (the sender went away): nothing to answer
            self.reflect(data, kernel_timestamp_ns(ancillary) or time.time_ns(), received_ttl(ancillary), source)

    def reflect(self, data: bytes, receive_ns: int, ttl: int | None, source: tuple[str, int] | tuple[str, int, int, int]) -> None:
        """Answer one received packet (dropped and counted if it is short, unauthenticated or corrupt)."""
        key = self.secret.secret if self.secret is not None else None
        reply = build_reflector_packet(data, receive_ns, ttl if ttl is not None else 0, self._error_estimate(), key=key)
        if reply is None:
            if len(data) < packet_bytes(key):
                self.dropped_short += 1
            elif key is not None and not verify(data, key):
                self.dropped_unauthenticated += 1
            else:
                self.dropped_corrupt += 1
            log.debug(kv("stamp_dropped", peer=source[0], size=len(data)))
            return
        clock_ns = time.time_ns()
        stamp_timestamp(reply, key, clock_ns + self.send_latency.correction_ns)  # T3 (and the HMAC)
        try:
            self.sock.sendto(reply, source)
        except OSError:
            self.send_errors += 1  # a full buffer or an unreachable sender: the sender counts it lost
            self.send_latency.not_sent()
            return
        self.send_latency.sent(clock_ns)
        self.reflected += 1
