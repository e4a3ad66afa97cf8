"""The load itself: Load PDUs sent at a sending-rate row from a thread of their own, and datagrams read in
batches, with the kernel's UDP segmentation offload doing the per-datagram work both ways.

At 1 Gbit/s the table's row sends 10 datagrams of 1250 bytes every 100 µs: 80 000 a second, too many
for one `send` each from Python beside an event loop. So a burst is one `sendmsg` of the burst's
datagrams laid end to end with UDP_SEGMENT (GSO, Linux 4.18): the kernel cuts them into datagrams; and
a receiving socket with UDP_GRO set is handed runs of same-sized datagrams in one `recvmsg`, with
their size beside them. The sender keeps the table's timing on a monotonic clock in its own thread
(with the thread's timer slack cut to 1 µs, since the default 50 µs is half a 100 µs tick); when a
sleep overshoots, the bursts owed go out at once (up to 10 ms of them), so that the row's rate holds
on average. A burst the socket cannot take (its buffer full) is dropped before it is numbered, so
local back-pressure never shows as loss at the receiver.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Final

from qiancheng.core.logs import kv

from .pdu import LOAD_HEADER, LOAD_ID, RANDOM_SIZE, TEST, SendingRate
from .rates import MIN_PAYLOAD

log = logging.getLogger("qiancheng.udpst.load")

__all__ = ["LoadSender", "enable_gro", "read_datagrams", "size_buffers", "UDP_SEGMENT", "UDP_GRO", "SOCKET_BUFFER_BYTES"]

SOL_UDP: Final = 17
UDP_SEGMENT: Final = 103  # <linux/udp.h>: the segment size of a send (GSO)
UDP_GRO: Final = 104  # <linux/udp.h>: receive coalesced datagrams, their size in a control message
#: what one GSO send may carry: 64 segments, and the 64 KiB an IP packet (before segmentation) can be
_GSO_SEGMENTS: Final = 64
_GSO_BYTES: Final = 65_507
_IPV6_SMALLER: Final = 20  # IPv6 payloads are 20 bytes smaller, so that packets stay the same size
_MAX_DEBT_NS: Final = 10_000_000  # bursts owed after an overshooting sleep, at most this much of them
_PR_SET_TIMERSLACK: Final = 29
_RECEIVE_BYTES: Final = 65_535
#: the socket buffers a test connection asks for (as OB-UDPST does): 8 ms of 1 Gbit/s, so that a receiving
#: event loop busy for a few ms (a status to send, a collection) loses nothing to its own socket
SOCKET_BUFFER_BYTES: Final = 1_024_000
_SO_SNDBUFFORCE: Final = 32  # <asm-generic/socket.h>: past net.core.wmem_max, with CAP_NET_ADMIN
_SO_RCVBUFFORCE: Final = 33
_GRO_CMSG_SPACE: Final = socket.CMSG_SPACE(4)


def _cut_timer_slack() -> None:
    """Let this thread's sleeps end within 1 µs of their deadline (Linux; elsewhere nothing changes)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _gso_works(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)  # 0: per send only; refused where there is no GSO
    except OSError:
        return False
    return True


class LoadSender:
    """Sends Load PDUs on a connected UDP socket at `row`, which the caller may change at any time."""

    def __init__(self, sock: socket.socket, row: SendingRate, ipv6: bool = False, random_payload: bool = False,
                 wall_ns: Callable[[], int] = time.time_ns, rng: random.Random | None = None) -> None:  # fmt: skip
        self._sock = sock
        self.row = row
        self._ipv6 = ipv6
        self._wall_ns = wall_ns
        self._rng = rng or random.Random()
        self._gso = _gso_works(sock)
        self._gso_limit = _GSO_BYTES  # the largest datagram GSO has taken on this path
        # what follows each header: zeros, or random bytes (against links that compress)
        self._padding = os.urandom(_GSO_BYTES) if random_payload else bytes(_GSO_BYTES)
        self._buffer = bytearray(self._padding)
        self._view = memoryview(self._buffer)
        self._laid_out = 0  # the datagram size the buffer's headers were last written for
        #: the header fields the caller keeps current (the receiving side's news)
        self.test_action = TEST
        self.rx_stopped = False
        self.status_seq_errors = 0
        self._status_time = (0, 0)  # the send time of the last status received
        self._status_arrived_ns = time.monotonic_ns()  # when it arrived (or when the test started)
        self.seq = 0
        self.datagrams = 0
        self.payload_bytes = 0
        self.refused_bursts = 0  # bursts the socket could not take (its buffer full): not sent, not numbered
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: OSError | None = None

    @property
    def gso(self) -> bool:
        return self._gso

    def status_received(self, sent_s: int, sent_ns: int) -> None:
        """A Status PDU arrived that was sent at (sent_s, sent_ns): echoed with the response delay."""
        self._status_time = (sent_s, sent_ns)
        self._status_arrived_ns = time.monotonic_ns()

    def start(self, first_burst_in_ns: int = 0) -> None:
        self._thread = threading.Thread(target=self._run, args=(first_burst_in_ns,), name="udpst-load", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, first_burst_in_ns: int) -> None:
        _cut_timer_slack()
        start = time.monotonic_ns() + first_burst_in_ns
        due1 = due2 = start
        try:
            while not self._stopping.is_set():
                row = self.row
                now = time.monotonic_ns()
                wake = now + 10_000_000  # a row with nothing to send looks again in 10 ms
                if row.burst1:
                    if now >= due1:
                        self._burst(row.payload1, row.burst1)
                        due1 = max(due1 + row.interval1_us * 1000, now - _MAX_DEBT_NS)
                    wake = min(wake, due1)
                else:
                    due1 = now
                if row.interval2_us and (row.burst2 or row.addon2):
                    if now >= due2:
                        if row.burst2:
                            self._burst(row.payload2, row.burst2)
                        if row.addon2:
                            self._burst(row.addon2, 1)
                        due2 = max(due2 + row.interval2_us * 1000, now - _MAX_DEBT_NS)
                    wake = min(wake, due2)
                else:
                    due2 = now
                delay = wake - time.monotonic_ns()
                if delay > 1_000_000:
                    self._stopping.wait(delay / 1e9)  # long waits wake at once on stop()
                elif delay > 0:
                    time.sleep(delay / 1e9)
        except OSError as error:  # the socket went away under us, or the path refuses these datagrams
            self.error = error
            if not self._stopping.is_set():
                log.warning(kv("udpst_load_stopped", error=error, seq=self.seq, row=self.row))

    def _size(self, size: int) -> int:
        if size & RANDOM_SIZE:
            low = MIN_PAYLOAD - (_IPV6_SMALLER if self._ipv6 else 0)
            return self._rng.randint(low, (size & ~RANDOM_SIZE) - (_IPV6_SMALLER if self._ipv6 else 0))
        return size - _IPV6_SMALLER if self._ipv6 and size >= MIN_PAYLOAD else size

    def _burst(self, size_field: int, count: int) -> None:
        """`count` datagrams of one size (drawn once when random), the same times in each."""
        size = self._size(size_field)
        wall = self._wall_ns()
        sent_s, sent_ns = divmod(wall, 1_000_000_000)
        status_s, status_ns = self._status_time
        response_delay = min((time.monotonic_ns() - self._status_arrived_ns + 500_000) // 1_000_000, 0xFFFF)
        per_send = min(_GSO_SEGMENTS, _GSO_BYTES // size) if self._gso and size <= self._gso_limit else 1
        if size != self._laid_out:  # headers of another size would lie in this size's padding
            self._buffer[:] = self._padding
            self._laid_out = size
        while count > 0:
            n = min(count, per_send)
            buffer, seq = self._buffer, self.seq
            for i in range(n):
                LOAD_HEADER.pack_into(buffer, i * size, LOAD_ID, self.test_action, self.rx_stopped, seq + i + 1, size,
                                      self.status_seq_errors, status_s, status_ns, sent_s, sent_ns, response_delay, 0)
            try:
                if n > 1:
                    self._sock.sendmsg([self._view[: n * size]], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))])
                else:
                    self._sock.send(self._view[:size])
            except OSError as error:
                if n > 1 and error.errno in (errno.EMSGSIZE, errno.EINVAL):
                    # datagrams larger than the path's MTU (jumbo rows on a 1500-byte line): GSO cannot cut
                    # them, so from now on they go one by one and the kernel fragments each
                    self._gso_limit = min(self._gso_limit, size - 1)
                    per_send = 1
                    continue
                if error.errno not in (errno.EAGAIN, errno.ENOBUFS):
                    raise
                self.refused_bursts += 1
                return
            self.seq += n
            self.datagrams += n
            self.payload_bytes += n * size
            count -= n


def size_buffers(sock: socket.socket, size: int = SOCKET_BUFFER_BYTES) -> None:
    """Ask for `size`-byte send and receive buffers: past the system's maximum where we may (CAP_NET_ADMIN),
    else up to it (net.core.rmem_max and wmem_max, 208 KiB by default: raise them on a probe for 1 Gbit/s)."""
    for force, plain in ((_SO_SNDBUFFORCE, socket.SO_SNDBUF), (_SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
            except OSError:
                pass


def enable_gro(sock: socket.socket) -> bool:
    """Ask for coalesced receives on `sock`; False where the kernel has no UDP GRO (each recv: one datagram)."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def read_datagrams(sock: socket.socket, buffer: bytearray | None = None) -> Iterator[memoryview]:
    """Every datagram waiting on a non-blocking `sock`, as views into one buffer (valid until the next
    one is asked for), splitting what GRO coalesced."""
    buffer = buffer if buffer is not None else bytearray(_RECEIVE_BYTES)
    view = memoryview(buffer)
    while True:
        try:
            length, ancillary, _, _ = sock.recvmsg_into([buffer], _GRO_CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        segment = length
        for level, kind, data in ancillary:
            if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
                segment = struct.unpack("=i", data[:4])[0] or length  # the kernel's int, in host order
        for start in range(0, length, segment):
            yield view[start : min(start + segment, length)]
