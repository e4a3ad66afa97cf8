"""The send-path latency a reflector adds to T3: learnt from the kernel's transmit stamps of a real UDP
socket on loopback, paired with the clock reads by the send's number."""

from __future__ import annotations

import select
import socket
import time

from qiancheng.probes.responder.send_latency import SendLatency


def test_the_median_gap_between_clock_read_and_departure_is_learnt() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.bind(("127.0.0.1", 0))
        latency = SendLatency(sender)
        assert latency.enabled and latency.correction_ns == 0
        for _ in range(40):
            clock_ns = time.time_ns()
            sender.sendto(b"x" * 112, receiver.getsockname())
            latency.sent(clock_ns)
            select.select([sender], [], [], 0.5)  # the stamp makes the socket readable
            latency.drain()
            receiver.recv(2048)
        # the system call and the stack between the clock read and the device: microseconds, never negative
        assert 0 < latency.correction_ns < 1_000_000
        # every stamp found its clock read: nothing is left waiting
        assert latency._pending == {}


def test_a_failed_send_restarts_the_pairing() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        latency = SendLatency(sender)
        latency.sent(time.time_ns())
        latency.not_sent()
        assert latency._pending == {}
        latency.drain()  # an empty error queue: nothing happens
        assert latency.correction_ns == 0
