"""How long this host takes from a clock read to a datagram leaving: the correction a reflector adds to T3.

STAMP's T3 is the time the reply is transmitted (RFC 8762 §4.3), but it must be written into the reply
before the reply is sent, so a software reflector reads the clock and then spends the HMAC, the system
call and the stack before the packet leaves: about 20-45 µs here, which the sender counts in the round
trip. The kernel reports when each datagram really left (SO_TIMESTAMPING software transmit stamps on
the socket's error queue, numbered by SOF_TIMESTAMPING_OPT_ID). T3 is written as the clock read plus the
shortest gap between those stamps and the clock reads of the last 64 replies: the send path takes at
least that long, so T3 is never later than the reply's departure (a median would be right on average
but later for half the replies, and a round trip on loopback, a few µs, would come out negative).
Gaps outside 0..1 ms (a stamp paired with the wrong reply after a failed send) are ignored.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from typing import Final

from qiancheng.core.addresses import enable_send_timestamps, send_timestamp_ns

__all__ = ["SendLatency"]

_RECVERR = {(socket.IPPROTO_IP, 11), (socket.IPPROTO_IPV6, 25)}  # IP_RECVERR, IPV6_RECVERR
_EXTENDED_ERROR = struct.Struct("=IBBBBII")  # struct sock_extended_err: ee_data is the send's number
_ORIGIN_TIMESTAMPING = 4
_WINDOW: Final = 64  # the latest gaps the shortest is taken from
_PENDING: Final = 1024  # clock reads awaiting their stamps (a reply whose stamp never comes is forgotten)
_MAX_GAP_NS: Final = 1_000_000
_ANCILLARY_BYTES: Final = 256
_DRAIN_PER_CALL: Final = 256


class SendLatency:
    """The send-path latency of one UDP socket, learnt from its kernel transmit stamps."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.enabled = enable_send_timestamps(sock, numbered=True)
        self.correction_ns = 0  # the shortest recent gap: what to add to a clock read taken before a send
        self._next_id = 0
        self._pending: dict[int, int] = {}
        self._gaps: deque[int] = deque(maxlen=_WINDOW)

    def sent(self, clock_ns: int) -> None:
        """A datagram was just sent, its timestamp field read from the clock at `clock_ns`."""
        if not self.enabled:
            return
        self._pending[self._next_id] = clock_ns
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        if len(self._pending) > _PENDING:
            del self._pending[next(iter(self._pending))]

    def not_sent(self) -> None:
        """A send failed: the kernel may or may not have numbered it, so pairing starts afresh."""
        self._pending.clear()

    def drain(self) -> None:
        """Read the transmit stamps queued on the socket's error queue; always call it when the socket
        is readable (a queued stamp keeps it readable)."""
        if not self.enabled:
            return
        changed = False
        for _ in range(_DRAIN_PER_CALL):
            try:
                _, ancillary, _, _ = self.sock.recvmsg(0, _ANCILLARY_BYTES, socket.MSG_ERRQUEUE)
            except OSError:  # BlockingIOError: the queue is empty
                break
            stamp, number = send_timestamp_ns(ancillary), _send_number(ancillary)
            if stamp is None or number is None:
                continue
            clock_ns = self._pending.pop(number, None)
            if clock_ns is None and number >= self._next_id:
                self._next_id = (number + 1) & 0xFFFFFFFF  # the kernel numbered a send that failed: catch up
            if clock_ns is not None and 0 <= stamp - clock_ns <= _MAX_GAP_NS:
                self._gaps.append(stamp - clock_ns)
                changed = True
        if changed:
            self.correction_ns = min(self._gaps)


def _send_number(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The OPT_ID number of the send a timestamp belongs to, from its sock_extended_err."""
    for level, kind, data in ancillary:
        if (level, kind) in _RECVERR and len(data) >= _EXTENDED_ERROR.size:
            _, origin, _, _, _, _, number = _EXTENDED_ERROR.unpack_from(data)
            if origin == _ORIGIN_TIMESTAMPING:
                return int(number)
    return None
