"""STAMP Session-Sender (kind `stamp`, RFC 8762): a train of test packets to a reflector.

Unauthenticated mode (§4.2.1) by default; with `secret_file` (the responder's shared secret) the train
runs in authenticated mode (§4.2.2): packets of at least 112 bytes, each signed with HMAC-SHA-256, and a
reply counts only when its HMAC verifies (§4.4); the others are counted in `unauthenticated_replies`.

Each train has its own UDP socket, connected to the reflector (so an ICMP port unreachable surfaces as
`refused`), and numbers its packets from 0 (RFC 8762 §4.2.1). Packets are `size` bytes, zero padded;
a reflector answers with the same size.

Timestamps (RFC 8762 §4.2, §4.3). T1, the send time, is a clock read written into the packet as the
last step before `send()`; for our own figures it is then replaced by the kernel's software send
timestamp (SO_TIMESTAMPING, from the socket's error queue) where the kernel gives one, which leaves the
interpreter's share of the send (some 10-20 µs) out. T2 and T3 are the reflector's receive and transmit
times, read from its reply; T4 is this host's kernel receive timestamp (SO_TIMESTAMPNS). T1 and T4 are
CLOCK_REALTIME, so T4 − T1 is checked against the monotonic clock reads around it, which replace it if
a clock step made them disagree.

Figures.
- round-trip delay = (T4 − T1) − (T3 − T2): the reflector's time between receive and transmit is taken
  out, and it needs no clock synchronization, as both differences are read on one clock each;
- one-way delays: forward T2 − T1, backward T4 − T3, medians over the train. They compare two hosts'
  clocks, so they are only as good as those clocks agree: `clock_error_seconds` is the sum of both
  ends' Error Estimates (RFC 4656 §4.1.2), and `clock_synchronized` is 1 only when both ends set the
  S bit. A one-way delay smaller than the clock error means nothing, and a negative one says a clock
  is off; they are reported as measured, never clamped. When the reflector sends PTP timestamps (Z bit)
  the one-way delays are left out (its epoch and ours differ by the TAI − UTC offset).
- loss (RFC 7680): a packet is lost unless its reply came within `timeout` of its send; replies after
  that count in `late`, second copies in `duplicates`; the train ends when every packet is answered or
  the last one has timed out, and nothing arriving after that is counted; `reordered` counts the packets whose reply came
  after the reply to a packet with a higher sequence number (RFC 4737 §3); neither changes loss.
- `mos`, `r_factor`: the E-model estimate (probes/measure/mos.py) from half the median round trip, the jitter
  and the loss of the train.
The reflector's stateless mode allows round-trip loss only (RFC 8762 §4); a lost packet is not
attributed to a direction.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from dataclasses import dataclass, field

from qiancheng.core.addresses import (
    enable_receive_timestamps,
    enable_send_timestamps,
    kernel_timestamp_ns,
    resolve,
    send_timestamp_ns,
    split_host_port,
)
from qiancheng.core.errors import MeasurementError
from qiancheng.core.kind_settings import StampSettings
from qiancheng.core.responder_secret import read_secret
from qiancheng.core.result import Target
from qiancheng.core.stamp_packet import (
    ErrorEstimate,
    ReflectorPacket,
    build_sender_packet,
    enable_receive_ttl,
    local_error_estimate,
    ns_from_timestamp,
    ntp_from_ns,
    packet_bytes,
    parse_reflector_packet,
    parse_sender_packet,
    received_ttl,
    stamp_timestamp,
)
from qiancheng.core.stats import median, train_stats

from .mos import voice_figures
from .outcome import Outcome

__all__ = ["measure", "StampTrain"]


_ANCILLARY_BYTES = 256  # SCM_TIMESTAMPNS and IP_TTL / IPV6_HOPLIMIT, with their headers
_MAX_DATAGRAM = 65_535
_READS_PER_WAKEUP = 64
_ERRQUEUE_ANCILLARY_BYTES = 512  # SCM_TIMESTAMPING (48 bytes) and IP(V6)_RECVERR (up to 44), with room
_LOOPED_HEADROOM = 128  # a looped-back packet carries its link, IP and UDP headers before our payload


@dataclass(eq=False, slots=True)
class StampTrain:
    """The state of one train: what was sent, and what the replies said, filled in as they arrive."""

    count: int
    timeout: float
    size: int = 44
    key: bytes | None = None  # authenticated mode's HMAC key; None: unauthenticated
    sent_wall_ns: list[int] = field(default_factory=list)  # T1 as written into each packet
    sent_perf_ns: list[int] = field(default_factory=list)
    sent_kernel_ns: list[int] = field(default_factory=list)  # 0 until the kernel's send timestamp is read
    samples: list[float | None] = field(default_factory=list)
    forward: list[float] = field(default_factory=list)
    backward: list[float] = field(default_factory=list)
    answered: set[int] = field(default_factory=set)
    highest: int = -1
    duplicates: int = 0
    late: int = 0
    reordered: int = 0
    received: int = 0
    unauthenticated: int = 0  # replies whose HMAC did not verify (authenticated mode): ignored
    refused: bool = False
    kernel_receive: bool = True
    reflector_estimate: ErrorEstimate | None = None
    reflector_ttl: int | None = None
    reply_ttl: int | None = None
    complete: asyncio.Future[None] | None = None

    def __post_init__(self) -> None:
        self.samples = [None] * self.count

    def sent(self, wall_ns: int, perf_ns: int) -> None:
        """Record a packet's send: T1 as written into it, and the monotonic clock read beside it."""
        self.sent_wall_ns.append(wall_ns)
        self.sent_perf_ns.append(perf_ns)
        self.sent_kernel_ns.append(0)

    def transmitted(self, looped: bytes, kernel_ns: int) -> None:
        """The kernel's send timestamp of a packet, given the packet as the error queue returned it."""
        if len(looped) < self.size:
            return
        sender = parse_sender_packet(looped[-self.size:], self.key)
        if sender is None or sender.sequence >= len(self.sent_wall_ns):
            return
        if sender.timestamp == ntp_from_ns(self.sent_wall_ns[sender.sequence]):
            self.sent_kernel_ns[sender.sequence] = kernel_ns

    def reply(self, packet: ReflectorPacket, kernel_ns: int | None, receive_wall_ns: int, perf_ns: int,
              ttl: int | None) -> None:
        """Account for one reply; T4 is `kernel_ns`, else the clock read right after it was read."""
        index = packet.sender_sequence
        if index >= len(self.sent_perf_ns) or packet.sender_timestamp != ntp_from_ns(self.sent_wall_ns[index]):
            return  # not a reply to a packet of this train
        if index in self.answered:
            self.duplicates += 1
            return
        self.answered.add(index)
        t1 = self.sent_kernel_ns[index] or self.sent_wall_ns[index]
        elapsed = (perf_ns - self.sent_perf_ns[index]) / 1e9
        t4 = kernel_ns if kernel_ns is not None else receive_wall_ns
        self.kernel_receive &= kernel_ns is not None
        local = (t4 - t1) / 1e9
        if not 0 <= local <= elapsed:  # the wall clock stepped during the round trip
            local, t4 = elapsed, t1 + round(elapsed * 1e9)
        if local > self.timeout:
            self.late += 1
            self.highest = max(self.highest, index)
            return
        if index < self.highest:
            self.reordered += 1
        self.highest = max(self.highest, index)
        estimate = packet.error_estimate
        t2 = ns_from_timestamp(packet.receive_timestamp, estimate)
        t3 = ns_from_timestamp(packet.timestamp, estimate)
        residence = min(max((t3 - t2) / 1e9, 0.0), local)  # a reflector cannot hold a packet < 0 s or > RTT
        self.samples[index] = local - residence
        if not estimate.ptp_format:
            self.forward.append((t2 - t1) / 1e9)
            self.backward.append((t4 - t3) / 1e9)
        self.reflector_estimate = estimate
        self.reflector_ttl = packet.sender_ttl
        if ttl is not None:
            self.reply_ttl = ttl
        self.received += 1
        if self.received == self.count and self.complete is not None and not self.complete.done():
            self.complete.set_result(None)

    def read(self, sock: socket.socket) -> None:
        """Read every send timestamp, then every reply, waiting on the train's socket, until the train is over."""
        if self.complete is not None and self.complete.done():
            return  # over: what comes now (a late copy) belongs to no train
        # Send timestamps first: a reply read in this same wakeup needs its packet's send time. Always
        # drained: a stamp left queued would keep the socket readable (EPOLLERR) forever.
        for _ in range(_READS_PER_WAKEUP):
            try:
                looped, ancillary, _, _ = sock.recvmsg(self.size + _LOOPED_HEADROOM, _ERRQUEUE_ANCILLARY_BYTES,
                                                       socket.MSG_ERRQUEUE)
            except ConnectionRefusedError:
                self.refused = True
                continue
            except OSError:  # BlockingIOError: the queue is empty
                break
            if (stamp := send_timestamp_ns(ancillary)) is not None:
                self.transmitted(looped, stamp)
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, ancillary, _, _ = sock.recvmsg(_MAX_DATAGRAM, _ANCILLARY_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                self.refused = True  # ICMP port unreachable for an earlier packet: no reflector there
                continue
            except OSError:
                continue
            perf_ns, receive_wall_ns = time.perf_counter_ns(), time.time_ns()
            packet = parse_reflector_packet(data, self.key)
            if packet is None and self.key is not None and len(data) >= packet_bytes(self.key):
                self.unauthenticated += 1
            if packet is not None:
                self.reply(packet, kernel_timestamp_ns(ancillary), receive_wall_ns, perf_ns, received_ttl(ancillary))
                if self.complete is not None and self.complete.done():
                    return  # the last reply: copies read after it would depend on how fast we close

    def figures(self, own: ErrorEstimate) -> dict[str, float]:
        """The train's figures under the names of docs/metrics.md (see the module docstring)."""
        stats = train_stats(self.samples, duplicates=self.duplicates, late=self.late)
        figures = stats.figures()
        figures["reordered"] = float(self.reordered)
        if self.forward:
            figures["forward_delay_median_seconds"] = median(self.forward)
            figures["backward_delay_median_seconds"] = median(self.backward)
        if self.reflector_estimate is not None:
            figures["clock_error_seconds"] = own.seconds + self.reflector_estimate.seconds
            figures["clock_synchronized"] = float(own.synchronized and self.reflector_estimate.synchronized)
        if stats.rtt_median is not None:
            figures.update(voice_figures(stats.rtt_median / 2, stats.jitter or 0.0, stats.loss_ratio))
        return figures


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _open(family: socket.AddressFamily, address: str, port: int) -> tuple[socket.socket, bool]:
    """A UDP socket connected to the reflector, and whether the kernel will report send timestamps."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        enable_receive_timestamps(sock)
        enable_receive_ttl(sock)
        send_timestamps = enable_send_timestamps(sock)
        sock.connect((address, port))
    except OSError as error:
        sock.close()
        raise MeasurementError("unreachable" if error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) else "error",
                               f"cannot send to {address} port {port}: {error.strerror}") from None
    return sock, send_timestamps


async def measure(target: Target, settings: StampSettings) -> Outcome:
    """One STAMP train: per-packet round-trip samples and the train's figures."""
    try:
        host, port = split_host_port(target.address, settings.port)
    except ValueError as error:
        raise MeasurementError("error", str(error)) from None
    family, address = await resolve(host, port, settings.family, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    try:
        key = read_secret(settings.secret_file) if settings.secret_file is not None else None
    except ValueError as error:
        raise MeasurementError("error", f"secret_file: {error}") from None
    size = settings.packet_size()
    own = local_error_estimate()
    train = StampTrain(settings.count, float(settings.timeout), size, key)
    train.complete = loop.create_future()
    sock, send_timestamps = _open(family, address, port)
    loop.add_reader(sock.fileno(), train.read, sock)
    send_errors: list[OSError] = []
    try:
        first_send = loop.time()
        for sequence in range(settings.count):
            delay = first_send + sequence * float(settings.packet_interval) - loop.time()
            if sequence and delay > 0:
                await asyncio.sleep(delay)
            packet = build_sender_packet(sequence, 0, own, size, key=key)
            sent_wall_ns, sent_perf_ns = time.time_ns(), time.perf_counter_ns()
            stamp_timestamp(packet, key, sent_wall_ns)  # T1 (and the HMAC), as late as we can
            train.sent(sent_wall_ns, sent_perf_ns)
            try:
                sock.send(packet)
            except ConnectionRefusedError:
                train.refused = True  # the ICMP error of an earlier packet; this one is lost too
            except OSError as error:  # a full send buffer or no route: the packet is lost
                send_errors.append(error)
        remaining = (train.sent_perf_ns[-1] - time.perf_counter_ns()) / 1e9 + float(settings.timeout)
        if remaining > 0 and not train.complete.done():
            timer = loop.call_later(remaining, _finish, train.complete)
            try:
                await train.complete
            finally:
                timer.cancel()
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()

    figures = train.figures(own)
    info = {
        "address": address,
        "port": str(port),
        "size_bytes": str(size),
        "mode": "authenticated" if key is not None else "unauthenticated",
        "receive_timestamps": "kernel" if train.kernel_receive else "clock",
        "send_timestamps": "kernel" if send_timestamps and all(
            train.sent_kernel_ns[i] for i in train.answered if train.samples[i] is not None) else "clock",
    }
    if train.reflector_ttl is not None:
        info["reflector_ttl"] = str(train.reflector_ttl)  # TTL / hop limit our packets reached the reflector with
    if train.reply_ttl is not None:
        info["reply_ttl"] = str(train.reply_ttl)  # TTL / hop limit the replies reached us with
    if train.unauthenticated:
        info["unauthenticated_replies"] = str(train.unauthenticated)  # wrong secret, or a forger
    if train.reflector_estimate is not None and train.reflector_estimate.ptp_format:
        info["reflector_timestamps"] = "ptp"
    reason: str | None = None
    detail: str | None = None
    if train.received == 0:
        reason = "refused" if train.refused else "loss"
        detail = (f"{address} port {port} refused (ICMP port unreachable): no STAMP reflector there" if train.refused
                  else f"no reply from {address} port {port} to {settings.count} STAMP packets within "
                       f"{float(settings.timeout):g} s")
        if send_errors:
            detail += f" ({len(send_errors)} not sent: {send_errors[0].strerror or send_errors[0]})"
        if train.unauthenticated:
            detail += f"; {train.unauthenticated} replies failed HMAC verification: is secret_file the reflector's?"
        elif key is None:
            detail += " (a reflector with a shared secret answers only authenticated packets: see secret_file)"
        else:
            detail += " (an authenticated reflector answers only packets signed with its own secret: is secret_file its?)"
    elif send_errors:
        info["send_errors"] = f"{len(send_errors)}: {send_errors[0].strerror or send_errors[0]}"
    return Outcome(
        error=reason,
        detail=detail,
        figures=figures,
        info=info,
        samples=train.samples,
    )
