"""A userspace delay relay between two TUN devices, one in each of two network namespaces.

This kernel has no netem, so delay, delay variation, reordering, duplication and late packets are made
here: every IP packet read from one TUN device is held for its drawn delay and then written to the other.
The relay keeps its own per-packet record (direction, arrival and release times, size, and the packet's
identity such as the ICMP id and sequence), so a test compares a measurement with what really happened.

Precision. Releases are kept in a heap; the relay sleeps in select() (microsecond timeouts) until
`_SPIN_NS` before the next release, then spins on a zero-timeout select so that the write happens within
a few tens of microseconds of its due time while arrivals are still read as they come.

Run by tests/netlab/lab.py as `python -m tests.netlab.relay SETTINGS_JSON`; it prints `ready` once both
devices exist, answers `flushed` to a `flush` line on stdin (the log file is then complete up to that
moment), takes `delay SECONDS` lines (a new one-way hold for packets arriving from then on), and exits
when stdin closes, so it never outlives the lab that started it.
"""

from __future__ import annotations

import ctypes
import fcntl
import heapq
import json
import os
import random
import select
import struct
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TextIO

__all__ = ["RelaySettings", "RelayRecord", "EchoTrip", "read_log", "echo_trips", "A_TO_B", "B_TO_A"]

A_TO_B, B_TO_A = "a_to_b", "b_to_a"
DISTRIBUTIONS = ("fixed", "uniform", "normal")

_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000
_CLONE_NEWNET = 0x40000000
_SPIN_NS = 300_000  # wake this early from select(), then spin; with 100 µs the calibration p99 doubled
_MAX_PACKET = 65_535
_RT_PRIORITY = 10


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """How the relay treats packets; times in seconds, shares as ratios 0..1.

    `delay` is the one-way hold in each direction (a round trip gains twice it). With `distribution`
    `uniform` the hold is drawn from delay ± spread, with `normal` from N(delay, spread²) clamped at 0.
    Without `reorder` a packet is never released before the previous one of its direction (a drawn
    hold shorter than that waits for it). `duplicate` is the share of packets written twice; `late` the
    share held `late_hold` instead of the drawn delay (they overtake nothing and are overtaken by the
    rest, as a late reply is); both act only on the directions in `impaired`.
    """

    delay: float = 0.0
    distribution: str = "fixed"
    spread: float = 0.0
    reorder: bool = False
    duplicate: float = 0.0
    late: float = 0.0
    late_hold: float = 0.0
    impaired: tuple[str, ...] = (A_TO_B, B_TO_A)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {self.distribution!r}")
        if self.delay < 0 or self.spread < 0 or self.late_hold < 0:
            raise ValueError("delay, spread and late_hold must be >= 0")
        if not (0 <= self.duplicate <= 1 and 0 <= self.late <= 1):
            raise ValueError("duplicate and late are shares within 0..1")
        if self.distribution == "uniform" and self.spread > self.delay:
            raise ValueError("uniform spread must not exceed the delay (holds cannot be negative)")
        if set(self.impaired) - {A_TO_B, B_TO_A}:
            raise ValueError(f"impaired directions are {A_TO_B!r} and {B_TO_A!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RelaySettings:
        fields = json.loads(text)
        fields["impaired"] = tuple(fields["impaired"])
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class RelayRecord:
    """One packet copy the relay wrote: its direction, times (CLOCK_MONOTONIC ns) and identity.

    For ICMP and ICMPv6 `kind` is the ICMP type and `ident`, `sequence` the echo id and sequence; for
    TCP `kind` is the flags byte and `ident`, `sequence` the source and destination ports; for UDP
    `kind` is 0 and the ports likewise. `copy` is 0 for the packet and 1 for its duplicate.
    """

    direction: str
    arrival_ns: int
    release_ns: int
    size: int
    protocol: str
    kind: int
    ident: int
    sequence: int
    copy: int
    late: bool

    @property
    def hold_seconds(self) -> float:
        return (self.release_ns - self.arrival_ns) / 1e9


def read_log(path: Path) -> list[RelayRecord]:
    """The records of a relay log file, in release order."""
    records = []
    for line in path.read_text().splitlines():
        d, arrival, release, size, protocol, kind, ident, sequence, copy, late = line.split("\t")
        records.append(RelayRecord(d, int(arrival), int(release), int(size), protocol, int(kind), int(ident),
                                   int(sequence), int(copy), late == "1"))
    return records


@dataclass(frozen=True, slots=True)
class EchoTrip:
    """One echo request as the relay saw it: when it came in, and when its first reply went out.

    `span_seconds` (first reply written − request read) is the round trip inside the relay's view;
    a measuring tool sees it plus the path between its socket and the relay's devices.
    """

    ident: int
    sequence: int
    arrival_ns: int
    span_seconds: float | None
    reply_copies: int
    reply_late: bool


_ECHO = {"icmp": (8, 0), "icmp6": (128, 129)}  # (request type, reply type)


def echo_trips(records: list[RelayRecord]) -> dict[int, list[EchoTrip]]:
    """Echo requests from a towards b and their replies, per echo identifier, in the order sent."""
    first_reply: dict[tuple[str, int, int], RelayRecord] = {}
    copies: dict[tuple[str, int, int], int] = {}
    requests: list[RelayRecord] = []
    for record in records:
        kinds = _ECHO.get(record.protocol)
        if kinds is None:
            continue
        key = (record.protocol, record.ident, record.sequence)
        if record.direction == A_TO_B and record.kind == kinds[0] and record.copy == 0:
            requests.append(record)
        elif record.direction == B_TO_A and record.kind == kinds[1]:
            copies[key] = copies.get(key, 0) + 1
            if key not in first_reply or record.release_ns < first_reply[key].release_ns:
                first_reply[key] = record
    trips: dict[int, list[EchoTrip]] = {}
    for request in sorted(requests, key=lambda r: r.arrival_ns):
        key = (request.protocol, request.ident, request.sequence)
        reply = first_reply.get(key)
        span = (reply.release_ns - request.arrival_ns) / 1e9 if reply is not None else None
        trips.setdefault(request.ident, []).append(
            EchoTrip(request.ident, request.sequence, request.arrival_ns, span, copies.get(key, 0),
                     reply is not None and reply.late))
    return trips


def packet_identity(packet: bytes) -> tuple[str, int, int, int]:
    """(protocol, kind, ident, sequence) of an IP packet, as RelayRecord describes them."""
    if len(packet) < 20:
        return "other", 0, 0, 0
    version = packet[0] >> 4
    if version == 4:
        protocol, body = packet[9], packet[(packet[0] & 0x0F) * 4:]
        names = {1: "icmp", 6: "tcp", 17: "udp"}
    elif version == 6 and len(packet) >= 40:
        protocol, body = packet[6], packet[40:]
        names = {58: "icmp6", 6: "tcp", 17: "udp"}
    else:
        return "other", 0, 0, 0
    name = names.get(protocol, "other")
    if name in ("icmp", "icmp6") and len(body) >= 8:
        ident, sequence = struct.unpack_from("!HH", body, 4)
        return name, body[0], ident, sequence
    if name == "tcp" and len(body) >= 14:
        source, destination = struct.unpack_from("!HH", body)
        return name, body[13], source, destination
    if name == "udp" and len(body) >= 4:
        source, destination = struct.unpack_from("!HH", body)
        return name, 0, source, destination
    return "other", 0, 0, 0


def _setns(fd: int) -> None:
    """Move this (single-threaded) process into the network namespace open at `fd` (no os.setns in 3.11)."""
    if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


def open_tun(netns: str, device: str) -> int:
    """A non-blocking fd of a new TUN device `device` created inside the named namespace.

    A TUN device is created in the namespace of the process that opens it, and its fd keeps working from
    anywhere: so the relay steps into the namespace, opens the device, and steps back.
    """
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", device.encode(), _IFF_TUN | _IFF_NO_PI))
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)
    return fd


class _Relay:
    """The packet scheduler: reads both devices, holds each packet, writes it to the other device."""

    def __init__(self, settings: RelaySettings, fds: dict[str, tuple[int, int]], log: TextIO) -> None:
        self.settings = settings
        self.fds = fds  # direction → (read fd, write fd)
        self.log = log
        self.random = random.Random(settings.seed)
        # (due ns, arrival order, direction, packet, arrival ns, copy, late): the order breaks ties FIFO
        self.heap: list[tuple[int, int, str, bytes, int, int, bool]] = []
        self.order = 0
        self.last_release = {A_TO_B: 0, B_TO_A: 0}

    def hold_ns(self) -> int:
        s = self.settings
        if s.distribution == "uniform":
            seconds = self.random.uniform(s.delay - s.spread, s.delay + s.spread)
        elif s.distribution == "normal":
            seconds = max(0.0, self.random.gauss(s.delay, s.spread))
        else:
            seconds = s.delay
        return round(seconds * 1e9)

    def arrive(self, direction: str, packet: bytes, arrival_ns: int) -> None:
        s = self.settings
        impaired = direction in s.impaired
        late = impaired and s.late > 0 and self.random.random() < s.late
        if late:
            due = arrival_ns + round(s.late_hold * 1e9)
        else:
            due = arrival_ns + self.hold_ns()
            if not s.reorder:
                due = max(due, self.last_release[direction])
                self.last_release[direction] = due
        copies = 2 if impaired and s.duplicate > 0 and self.random.random() < s.duplicate else 1
        for copy in range(copies):
            self.order += 1
            heapq.heappush(self.heap, (due, self.order, direction, packet, arrival_ns, copy, late))

    def release_due(self) -> None:
        while self.heap and self.heap[0][0] <= time.monotonic_ns():
            _, _, direction, packet, arrival_ns, copy, late = heapq.heappop(self.heap)
            try:
                os.write(self.fds[direction][1], packet)
            except OSError:
                continue  # the device went down (teardown): nothing to deliver to
            released = time.monotonic_ns()
            protocol, kind, ident, sequence = packet_identity(packet)
            self.log.write(f"{direction}\t{arrival_ns}\t{released}\t{len(packet)}\t{protocol}\t{kind}\t"
                           f"{ident}\t{sequence}\t{copy}\t{int(late)}\n")

    def read(self, direction: str) -> None:
        fd = self.fds[direction][0]
        while True:
            try:
                packet = os.read(fd, _MAX_PACKET)
            except BlockingIOError:
                return
            self.arrive(direction, packet, time.monotonic_ns())

    def serve(self, control: TextIO) -> None:
        readers = {self.fds[A_TO_B][0]: A_TO_B, self.fds[B_TO_A][0]: B_TO_A}
        control_fd = control.fileno()
        watched = [*readers, control_fd]
        while True:
            self.release_due()
            timeout: float | None = None
            if self.heap:
                wait_ns = self.heap[0][0] - time.monotonic_ns()
                timeout = max(0.0, (wait_ns - _SPIN_NS) / 1e9)
            readable, _, _ = select.select(watched, [], [], timeout)
            for fd in readable:
                if fd == control_fd:
                    line = os.read(control_fd, 4096)
                    if not line:
                        return  # the lab closed our stdin: it is tearing down
                    for command in line.split(b"\n"):
                        if command.startswith(b"delay "):  # packets arriving from now on are held this long
                            self.settings = replace(self.settings, delay=float(command.split()[1]))
                    self.log.flush()
                    sys.stdout.write("flushed\n" * line.count(b"flush"))
                    sys.stdout.flush()
                else:
                    self.read(readers[fd])


def main(argv: list[str]) -> int:
    settings = RelaySettings.from_json(argv[1])
    a_netns, a_dev, b_netns, b_dev, log_path = argv[2:7]
    tun_a, tun_b = open_tun(a_netns, a_dev), open_tun(b_netns, b_dev)
    # a_to_b: what namespace a sends into its device comes out of b's device, and back.
    fds = {A_TO_B: (tun_a, tun_b), B_TO_A: (tun_b, tun_a)}
    try:
        # Real-time priority: a busy machine must not delay a release by a scheduler time slice. The
        # spin before each release is bounded (_SPIN_NS), and the kernel's RT throttling still applies.
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_RT_PRIORITY))
    except OSError:
        pass  # without CAP_SYS_NICE the relay still works, with coarser releases under load
    with open(log_path, "w", buffering=1 << 20) as log:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        _Relay(settings, fds, log).serve(sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
