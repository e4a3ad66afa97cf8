"""ICMP echo train (kind `icmp`): `count` echo requests, one every `packet_interval`, RTT per packet.

Sockets. One ICMP socket per IP family and event loop is shared by every train, so a thousand targets
cost two file descriptors and one reader, not a thousand sockets each seeing every reply. It is a raw
socket when the probe has root or CAP_NET_RAW, else a ping socket (SOCK_DGRAM, allowed by the
`net.ipv4.ping_group_range` sysctl); with neither the result fails with reason `permission` and says
how to grant it. Replies are routed to their train by (source address, sequence number) and checked
against a per-train token in the payload, so stray or stale replies are never counted.

Timing. The send time is the kernel's software send timestamp (SO_TIMESTAMPING, read back from the
socket's error queue), falling back to a clock read right before `sendto()`; the arrival time is the
kernel's receive timestamp (SO_TIMESTAMPNS). So neither a busy event loop nor a busy thread adds to the
RTT. Kernel stamps are CLOCK_REALTIME, so each RTT is checked against the monotonic pair of clock reads
around it, which is used if a clock step made them disagree. `info.send_timestamps` says which send
time was used: `kernel` for every packet, else `clock`.

Counting (RFC 7680 / RFC 2681). A packet is lost unless its reply came within `timeout` of its send.
A reply after that is counted in `late`, a second reply to the same packet in `duplicates`; neither
changes loss nor adds a sample. The train ends when every packet is answered or the last one timed out.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import random
import socket
import struct
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qiancheng.core.addresses import (
    UNREACHABLE_ERRNOS,
    canonical_address,
    enable_receive_timestamps,
    enable_send_timestamps,
    kernel_timestamp_ns,
    resolve,
    send_timestamp_ns,
    split_host_port,
)
from qiancheng.core.clock import monotonic
from qiancheng.core.errors import MeasurementError
from qiancheng.core.kind_settings import IcmpSettings
from qiancheng.core.result import Target
from qiancheng.core.stats import train_figures

from .icmp_packet import ECHO_REPLY, build_echo_request, ones_complement_sum, parse_echo_reply, parse_looped_request
from .mos import voice_figures
from .outcome import Outcome

__all__ = ["measure", "measure_group"]

_PROTOCOLS = {socket.AF_INET: socket.IPPROTO_ICMP, socket.AF_INET6: socket.IPPROTO_ICMPV6}
_VERSIONS = {socket.AF_INET: 4, socket.AF_INET6: 6}
_FAMILY_NAMES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
_TOKEN_BYTES = 8
# An idle socket stays open this long, so per-second tests of many targets do not reopen it for each train.
_IDLE_CLOSE_SECONDS = 5.0
_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # room for a burst of replies from a thousand targets
_READS_PER_WAKEUP = 256
_LOOPED_PACKET_BYTES = 256  # enough of a looped-back request for its headers (the rest is truncated)
_ERRQUEUE_ANCILLARY_BYTES = 512  # SCM_TIMESTAMPING (48 bytes) and IP(V6)_RECVERR (up to 44), with room
# Kernel-side filters of raw sockets: a set bit blocks that ICMP type (linux/icmp.h, linux/icmpv6.h).
_SOL_RAW, _ICMP_FILTER, _ICMP6_FILTER = 255, 1, 1
_PERMISSION_HINT = (
    "ICMP needs root or CAP_NET_RAW (setcap cap_net_raw+ep on the interpreter, or AmbientCapabilities="
    "CAP_NET_RAW in the systemd unit), or net.ipv4.ping_group_range covering the probe's group"
)


@dataclass(eq=False, slots=True)
class _Train:
    """The state of one train: send times, samples and counts, filled in by the shared socket."""

    count: int
    timeout: float
    token: bytes
    sent_wall_ns: list[int] = field(default_factory=list)
    sent_perf_ns: list[int] = field(default_factory=list)
    sent_kernel_ns: list[int] = field(default_factory=list)  # 0 until the kernel's send timestamp is read
    samples: list[float | None] = field(default_factory=list)
    answered: set[int] = field(default_factory=set)
    duplicates: int = 0
    late: int = 0
    received: int = 0
    #: called once every packet of the train is answered
    on_answered: Callable[[], None] | None = None

    def transmitted(self, index: int, kernel_ns: int) -> None:
        if index < len(self.sent_kernel_ns):
            self.sent_kernel_ns[index] = kernel_ns

    def reply(self, index: int, payload: bytes, kernel_ns: int | None, perf_ns: int) -> None:
        if index >= len(self.sent_perf_ns) or not payload.startswith(self.token):
            return  # not ours: a stale reply reusing a sequence number, or a corrupted one
        if index in self.answered:
            self.duplicates += 1
            return
        self.answered.add(index)
        seconds = (perf_ns - self.sent_perf_ns[index]) / 1e9
        if kernel_ns is not None:
            kernel_seconds = (kernel_ns - (self.sent_kernel_ns[index] or self.sent_wall_ns[index])) / 1e9
            # The kernel stamped the reply before we read it; outside 0..seconds the wall clock stepped.
            if 0 <= kernel_seconds <= seconds:
                seconds = kernel_seconds
        if seconds > self.timeout:
            self.late += 1
            return
        self.samples[index] = seconds
        self.received += 1
        if self.received == self.count and self.on_answered is not None:
            self.on_answered()


class _EchoSocket:
    """The ICMP socket of one family on one event loop, shared by all trains while any is running."""

    def __init__(self, family: socket.AddressFamily, loop: asyncio.AbstractEventLoop) -> None:
        self.family = family
        self.version = _VERSIONS[family]
        self._loop = loop
        self.sock, self.mode = _open(family)
        self.send_timestamps = enable_send_timestamps(self.sock)
        self.identifier = random.getrandbits(16)  # dgram sockets: the kernel sets and checks its own
        self._next_sequence = random.getrandbits(16)
        # sequence → (train, packet index, address sent to); sequences are unique per socket
        self._routes: dict[int, tuple[_Train, int, str]] = {}
        self.users = 0
        self.idle_since = 0.0
        self.closed = False
        self._closer: asyncio.Task[None] | None = None
        loop.add_reader(self.sock.fileno(), self._on_readable)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if _sockets.get(self._loop, {}).get(self.family) is self:
            del _sockets[self._loop][self.family]
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def idle(self) -> None:
        """No train uses the socket now: close it once it has stayed unused for a while."""
        self.idle_since = self._loop.time()
        if self._closer is None:
            self._closer = self._loop.create_task(self._close_when_idle(), name=f"icmp{self.version} idle close")

    async def _close_when_idle(self) -> None:
        # One task per socket, not one per idle moment: with a thousand per-second targets the socket
        # falls idle between most trains. Cancelled only when its event loop shuts down, which closes it.
        try:
            while True:
                if self.users:  # in use again: look once more a full idle time from now
                    await asyncio.sleep(_IDLE_CLOSE_SECONDS)
                    continue
                remaining = self.idle_since + _IDLE_CLOSE_SECONDS - self._loop.time()
                if remaining <= 0:
                    return
                await asyncio.sleep(remaining)
        finally:
            self.close()

    def register(self, address: str, train: _Train) -> list[int]:
        """Reserve `train.count` sequence numbers for packets to `address` and route their replies."""
        first = self._next_sequence
        self._next_sequence = (first + train.count) & 0xFFFF
        sequences = [(first + i) & 0xFFFF for i in range(train.count)]
        for index, sequence in enumerate(sequences):
            self._routes[sequence] = (train, index, address)
        return sequences

    def unregister(self, sequences: list[int], train: _Train) -> None:
        for sequence in sequences:
            route = self._routes.get(sequence)
            if route is not None and route[0] is train:
                del self._routes[sequence]

    def send(self, address: str, sequence: int, payload: bytes, payload_sum: int | None = None) -> tuple[int, int]:
        """Send one echo request; returns the (wall, monotonic) clock reads taken right before it left."""
        packet = build_echo_request(self.version, self.identifier, sequence, payload, payload_sum)
        sent_wall_ns, sent_perf_ns = time.time_ns(), time.perf_counter_ns()
        self.sock.sendto(packet, (address, 0))
        return sent_wall_ns, sent_perf_ns

    def _on_readable(self) -> None:
        # Send timestamps first: a reply read in this same wakeup needs its packet's send time.
        # Always drained: a stamp left queued would keep the socket readable (EPOLLERR) forever.
        if self.send_timestamps:
            self._read_send_timestamps()
        with_ip_header = self.mode == "raw" and self.version == 4
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, ancillary, _, source = self.sock.recvmsg(65_535, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error queued on the socket; the packet it concerns times out
            perf_ns = time.perf_counter_ns()
            echo = parse_echo_reply(self.version, data, with_ip_header)
            if echo is None or (self.mode == "raw" and echo.identifier != self.identifier):
                continue
            route = self._routes.get(echo.sequence)
            if route is not None and route[2] == canonical_address(source[0]):
                train, index, _ = route
                train.reply(index, echo.payload, kernel_timestamp_ns(ancillary), perf_ns)


    def _read_send_timestamps(self) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, ancillary, _, _ = self.sock.recvmsg(_LOOPED_PACKET_BYTES, _ERRQUEUE_ANCILLARY_BYTES, socket.MSG_ERRQUEUE)
            except OSError:  # BlockingIOError: the queue is empty
                return
            stamp = send_timestamp_ns(ancillary)
            request = parse_looped_request(self.version, data)
            if stamp is None or request is None:
                continue
            route = self._routes.get(request.sequence)
            if route is not None and (self.mode != "raw" or request.identifier == self.identifier):
                route[0].transmitted(route[1], stamp)


def _open(family: socket.AddressFamily) -> tuple[socket.socket, str]:
    """A raw ICMP socket if allowed, else a ping socket; MeasurementError `permission` if neither is."""
    protocol = _PROTOCOLS[family]
    try:
        sock, mode = socket.socket(family, socket.SOCK_RAW, protocol), "raw"
    except PermissionError:
        try:
            sock, mode = socket.socket(family, socket.SOCK_DGRAM, protocol), "dgram"
        except PermissionError:
            raise MeasurementError("permission", _PERMISSION_HINT) from None
    except OSError as error:
        raise MeasurementError("error", f"cannot open an ICMP socket: {error}") from None
    sock.setblocking(False)
    enable_receive_timestamps(sock)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER_BYTES)
        if mode == "raw" and family == socket.AF_INET:
            sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", 0xFFFFFFFF & ~(1 << ECHO_REPLY[4])))
        elif mode == "raw":
            blocked = [0xFFFFFFFF] * 8
            blocked[ECHO_REPLY[6] >> 5] &= ~(1 << (ECHO_REPLY[6] & 31))
            sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("8I", *blocked))
    except OSError:
        pass  # an optimisation only: replies are filtered in user space as well
    return sock, mode


_sockets: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _EchoSocket]] = weakref.WeakKeyDictionary()


def _acquire(family: socket.AddressFamily) -> _EchoSocket:
    loop = asyncio.get_running_loop()
    per_loop = _sockets.setdefault(loop, {})
    echo = per_loop.get(family)
    if echo is None or echo.closed:
        echo = per_loop[family] = _EchoSocket(family, loop)
    echo.users += 1
    return echo


def _release(echo: _EchoSocket) -> None:
    echo.users -= 1
    if echo.users == 0 and not echo.closed:
        echo.idle()


@functools.lru_cache(maxsize=4096)
def _literal_address(host: str) -> tuple[socket.AddressFamily, str] | None:
    """(family, canonical text) of an IP literal, None for a name: tests of a literal skip the resolver."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), str(ip)


@functools.lru_cache(maxsize=64)
def _padding(size: int) -> tuple[bytes, int]:
    """The payload after the token: bytes counting up, as ping sends; and their one's complement sum."""
    padding = bytes(i & 0xFF for i in range(size))
    return padding, ones_complement_sum(padding)


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Waiter:
    """Wakes the coroutine of a group once none of its trains is open any more."""

    def __init__(self, loop: asyncio.AbstractEventLoop, trains: int) -> None:
        self.open = trains
        self.wake: asyncio.Future[None] = loop.create_future()

    def closed(self) -> None:
        self.open -= 1
        if self.open == 0 and not self.wake.done():
            self.wake.set_result(None)


@dataclass(eq=False, slots=True)
class _Flight:
    """One test of a group: its train on the shared socket, from the first send until it is closed."""

    settings: IcmpSettings
    waiter: _Waiter
    address: str = ""
    echo: _EchoSocket | None = None
    train: _Train | None = None
    sequences: list[int] = field(default_factory=list)
    payload: bytes = b""
    payload_sum: int = 0
    send_errors: list[OSError] = field(default_factory=list)
    error: MeasurementError | None = None
    deadline_ns: int = 0  # perf_counter ns at which its last packet's reply is due
    finished: float | None = None  # monotonic seconds at which it was closed

    def start(self, echo: _EchoSocket, address: str) -> None:
        """Register a train for `address` on `echo`: its replies are routed to it from now on."""
        # The token only tells this train's replies from stale ones; it need not be secret, so no getrandom().
        settings = self.settings
        train = _Train(settings.count, float(settings.timeout), random.randbytes(_TOKEN_BYTES))
        train.samples = [None] * settings.count
        train.on_answered = self.close
        padding, padding_sum = _padding(settings.size - _TOKEN_BYTES)
        self.payload = train.token + padding
        # the token has an even length, so the payload's sum is the token's plus the padding's (RFC 1071 §2)
        self.payload_sum = ones_complement_sum(train.token) + padding_sum
        self.echo, self.address, self.train = echo, address, train
        self.sequences = echo.register(address, train)

    def send(self, index: int) -> None:
        """Send packet `index`; a send error loses that packet, except an unreachable first one, which ends the test."""
        assert self.echo is not None and self.train is not None
        train = self.train
        try:
            sent_wall_ns, sent_perf_ns = self.echo.send(self.address, self.sequences[index], self.payload, self.payload_sum)
        except (BlockingIOError, InterruptedError) as error:  # a full send buffer: the packet is lost
            self.send_errors.append(error)
            sent_wall_ns, sent_perf_ns = time.time_ns(), time.perf_counter_ns()
        except OSError as error:
            if error.errno in UNREACHABLE_ERRNOS and index == 0:
                self.fail(MeasurementError("unreachable", f"{self.address}: {error.strerror}"))
                return
            self.send_errors.append(error)  # e.g. EPERM from a firewall: this packet is lost
            sent_wall_ns, sent_perf_ns = time.time_ns(), time.perf_counter_ns()
        train.sent_wall_ns.append(sent_wall_ns)
        train.sent_perf_ns.append(sent_perf_ns)
        train.sent_kernel_ns.append(0)
        self.deadline_ns = sent_perf_ns + int(train.timeout * 1e9)

    def fail(self, error: MeasurementError) -> None:
        self.error = error
        self.close()

    def close(self) -> None:
        """Answered, expired or failed: stop routing its replies, so later ones count nowhere, as after a
        train of its own."""
        if self.finished is not None:
            return
        self.finished = monotonic()
        if self.echo is not None and self.train is not None:
            self.echo.unregister(self.sequences, self.train)
            _release(self.echo)
            self.train.on_answered = None  # no cycle between the two: freed as soon as the result is made
        self.waiter.closed()

    def outcome(self) -> Outcome | MeasurementError:
        """What the test found: its samples and statistics, or the error that ended it."""
        if self.error is not None:
            return self.error
        assert self.echo is not None and self.train is not None
        train, settings, address = self.train, self.settings, self.address
        figures = train_figures(train.samples, duplicates=train.duplicates, late=train.late)
        received = train.received
        kernel_sends = all(train.sent_kernel_ns[i] for i in range(settings.count) if train.samples[i] is not None)
        info = {
            "address": address,
            "socket": self.echo.mode,
            "size_bytes": str(settings.size),
            "send_timestamps": "kernel" if kernel_sends and received else "clock",
        }
        reason: str | None = None
        detail: str | None = None
        send_errors = self.send_errors
        if received == 0:
            reason = "loss"
            detail = f"no reply from {address} to {settings.count} echo requests within {float(settings.timeout):g} s"
            if send_errors:
                detail += f" ({len(send_errors)} not sent: {send_errors[0].strerror or send_errors[0]})"
        elif send_errors:
            info["send_errors"] = f"{len(send_errors)}: {send_errors[0].strerror or errno.errorcode.get(send_errors[0].errno or 0, '')}"
        if received:  # the voice estimate takes half the median RTT as the one-way delay
            voice = voice_figures(figures["rtt_median_seconds"] / 2, figures.get("jitter_seconds", 0.0), figures["loss_ratio"])
            figures.update(voice)
        return Outcome(error=reason, detail=detail, figures=figures, info=info, samples=train.samples)


async def _address(target: Target, settings: IcmpSettings) -> tuple[socket.AddressFamily, str]:
    """The family and address to ping; MeasurementError if the target has none."""
    try:
        host, _ = split_host_port(target.address, 0)
    except ValueError as error:
        raise MeasurementError("error", str(error)) from None
    literal = _literal_address(host)
    if literal is not None and settings.family in ("auto", _FAMILY_NAMES[literal[0]]):
        return literal
    return await resolve(host, 0, settings.family, socket.SOCK_DGRAM)


async def _addresses(tests: Sequence[tuple[Target, IcmpSettings]]) -> list[tuple[socket.AddressFamily, str] | MeasurementError]:
    """Each test's family and address, or why it has none; names are looked up together."""
    found: list[tuple[socket.AddressFamily, str] | MeasurementError] = []
    names: list[tuple[int, Target, IcmpSettings]] = []
    for target, settings in tests:
        try:
            host, _ = split_host_port(target.address, 0)
        except ValueError as error:
            found.append(MeasurementError("error", str(error)))
            continue
        literal = _literal_address(host)
        if literal is not None and settings.family in ("auto", _FAMILY_NAMES[literal[0]]):
            found.append(literal)
        else:
            names.append((len(found), target, settings))
            found.append(MeasurementError("resolve", host))  # replaced by the lookup below
    if names:
        looked_up = await asyncio.gather(*(_address(target, settings) for _, target, settings in names),
                                         return_exceptions=True)
        for (position, _, _), answer in zip(names, looked_up):
            if isinstance(answer, BaseException) and not isinstance(answer, MeasurementError):
                raise answer
            found[position] = answer
    return found


async def measure(target: Target, settings: IcmpSettings) -> Outcome:
    """One echo train: per-packet samples and the train's statistics."""
    ((found, _),) = await measure_group([(target, settings)])
    if isinstance(found, MeasurementError):
        raise found
    return found


async def measure_group(tests: Sequence[tuple[Target, IcmpSettings]]) -> list[tuple[Outcome | MeasurementError, float]]:
    """Trains that start together, each measured as `measure` would; for each, what it found (or why it
    failed) and the monotonic time at which it ended.

    Their packets of the same index leave in one pass and one coroutine waits for all of them: tests due in
    the same wake-up of the scheduler cost one task, one timer and one wake-up instead of one each. The
    packets of one pass go back to back, as the tests' own tasks would have sent them in that wake-up.
    """
    loop = asyncio.get_running_loop()
    waiter = _Waiter(loop, len(tests))
    flights = [_Flight(settings, waiter) for _, settings in tests]
    sockets: dict[socket.AddressFamily, _EchoSocket] = {}
    try:
        for flight, where in zip(flights, await _addresses(tests)):
            if isinstance(where, MeasurementError):
                flight.fail(where)
                continue
            family, address = where
            echo = sockets.get(family)
            try:
                if echo is None or echo.closed:
                    echo = sockets[family] = _acquire(family)
                else:
                    echo.users += 1  # each train holds the socket until it is closed
            except MeasurementError as error:
                flight.fail(error)
                continue
            flight.start(echo, address)
        # Packet i of a train leaves i packet intervals after the group's first send, in test order within a pass.
        passes = sorted((index * float(flight.settings.packet_interval), order, index)
                        for order, flight in enumerate(flights) if flight.error is None
                        for index in range(flight.settings.count))  # fmt: skip
        first_send = loop.time()
        for offset, order, index in passes:
            flight = flights[order]
            if flight.finished is not None:  # its first packet found no route
                continue
            if index and (delay := first_send + offset - loop.time()) > 0:
                await asyncio.sleep(delay)
            flight.send(index)
        await _until_closed(loop, flights, waiter)
    finally:
        for flight in flights:
            flight.close()
    return [(flight.outcome(), flight.finished or monotonic()) for flight in flights]


async def _until_closed(loop: asyncio.AbstractEventLoop, flights: list[_Flight], waiter: _Waiter) -> None:
    """Until every train is answered or its last packet's timeout has passed, closing each as it expires."""
    while waiter.open:
        now_ns = time.perf_counter_ns()
        open_flights = [flight for flight in flights if flight.finished is None]
        for flight in open_flights:
            if flight.deadline_ns <= now_ns:
                flight.close()
        if not waiter.open:
            return
        # A plain timer rather than wait_for(): no task per wait, which counts at thousands a second.
        next_deadline = min(flight.deadline_ns for flight in open_flights if flight.finished is None)
        timer = loop.call_later((next_deadline - now_ns) / 1e9, _finish, waiter.wake)
        try:
            await waiter.wake
        finally:
            timer.cancel()
        if waiter.wake.done() and waiter.open:  # woken by the timer: wait again with a fresh future
            waiter.wake = loop.create_future()
