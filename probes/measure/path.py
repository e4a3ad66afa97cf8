"""Traced path (kind `path`): which routers lie between the probe and a target, and how each answers.

Method. Rounds of TTL-limited probes (ICMP echo, UDP or TCP SYN; probes/measure/path_packet.py), one
probe every `packet_interval`, a round every `round_interval`, as mtr sends them; each flow keeps
constant what load balancers hash on, so that its hop list is one path (Paris traceroute). A router
where a probe's TTL runs out answers with ICMP time exceeded, quoting the probe; the destination with
an echo reply, a port unreachable (UDP) or a SYN-ACK or RST (TCP). The first round goes up to
`max_ttl` or until the destination answers; later rounds stop at the destination, or `gap_limit`
silent TTLs past the last hop that answered.

Sockets. Raw sockets (root or CAP_NET_RAW) owned by this trace on the probe's event loop: the kernel
writes the IP header with the TTL set per probe, scapy only builds the probes and dissects the
replies, and nothing blocks the loop. The receiving sockets filter in the kernel (ICMP types; for TCP
a socket filter on the target's port), so a download running beside a trace is not copied to it. Each
flow's source port is held by a socket bound to it for the trace's duration, so nothing else on the
box uses it meanwhile.

Timing. A reply's arrival is the kernel's receive timestamp (SO_TIMESTAMPNS); the send time a clock
read right before the send; a reply after `timeout` is late and does not count.

Path changes. The fingerprint of a trace that reached its destination is compared with the last such
trace of the same target and method in this process; a difference is a change: `path_changes` 1 and
`info.previous_fingerprint`. Traces that did not reach the destination neither count nor replace it.
"""

from __future__ import annotations

import asyncio
import ctypes
import random
import socket
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import msgspec

from qiancheng.core.addresses import (
    canonical_address,
    enable_receive_timestamps,
    kernel_timestamp_ns,
    resolve,
    split_host_port,
)
from qiancheng.core.asn_table import AsnTable, read_asn_table
from qiancheng.core.errors import MeasurementError
from qiancheng.core.kind_settings import PathSettings
from qiancheng.core.result import Hop, Target

from .outcome import Outcome
from .path_hops import ProbeRecord, Trace, aggregate, fingerprint
from .path_packet import Flow, Reply, build_probe, parse_icmp, parse_tcp
from .progress import report_path

__all__ = ["measure"]

_PROTOCOL_NUMBERS = {
    ("icmp", socket.AF_INET): socket.IPPROTO_ICMP,
    ("icmp", socket.AF_INET6): socket.IPPROTO_ICMPV6,
    ("udp", socket.AF_INET): socket.IPPROTO_UDP,
    ("udp", socket.AF_INET6): socket.IPPROTO_UDP,
    ("tcp", socket.AF_INET): socket.IPPROTO_TCP,
    ("tcp", socket.AF_INET6): socket.IPPROTO_TCP,
}
_READS_PER_WAKEUP = 64
_REVERSE_DNS_TIMEOUT = 2.0
_MAX_REMEMBERED_PATHS = 4096
_PERMISSION_HINT = (
    "tracing a path needs raw sockets: root or CAP_NET_RAW (setcap cap_net_raw+ep on the interpreter, or "
    "AmbientCapabilities=CAP_NET_RAW in the systemd unit)"
)
# ICMP types a receiving socket lets through (linux/icmp.h ICMP_FILTER, linux/icmpv6.h ICMP6_FILTER):
# echo reply, destination unreachable, time exceeded
_SOL_RAW, _ICMP_FILTER, _ICMP6_FILTER = 255, 1, 1
_WANTED_ICMP = {socket.AF_INET: (0, 3, 11), socket.AF_INET6: (129, 1, 3)}
_SO_ATTACH_FILTER = 26


@dataclass(eq=False, slots=True)
class _Sent:
    record: ProbeRecord
    wall_ns: int
    perf_ns: int


@dataclass(eq=False, slots=True)
class _Tracer:
    """The sockets and the probes in flight of one trace."""

    settings: PathSettings
    family: socket.AddressFamily
    destination: str
    flows: list[Flow]
    send_socket: socket.socket
    loop: asyncio.AbstractEventLoop
    records: list[ProbeRecord] = field(default_factory=list)
    in_flight: dict[int, _Sent] = field(default_factory=dict)
    next_identity: int = field(default_factory=lambda: random.randrange(1, 0xFFFF))
    late: int = 0
    all_answered: asyncio.Future[None] | None = None

    @property
    def version(self) -> int:
        return 4 if self.family == socket.AF_INET else 6

    def send(self, flow_index: int, ttl: int, round_index: int) -> None:
        identity = self.next_identity
        self.next_identity = identity + 1 if identity < 0xFFFE else 1
        record = ProbeRecord(flow_index, ttl, round_index)
        self.records.append(record)
        packet = build_probe(self.flows[flow_index], identity)
        if self.family == socket.AF_INET:
            self.send_socket.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        else:
            self.send_socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
        sent = _Sent(record, time.time_ns(), time.perf_counter_ns())
        try:
            self.send_socket.sendto(packet, (self.destination, 0))
        except (BlockingIOError, InterruptedError):
            return  # a full send buffer: this probe is lost
        except OSError as error:
            # the local stack refused it (no route, a firewall): that is the answer at this TTL
            if record.ttl == self.settings.first_ttl and round_index == 0:
                raise MeasurementError("unreachable", f"{self.destination}: {error.strerror}") from None
            return
        self.in_flight[identity] = sent

    def on_readable(self, sock: socket.socket, tcp: bool) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, ancillary, _, source = sock.recvmsg(2048, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            perf_ns = time.perf_counter_ns()
            responder = canonical_address(source[0])
            try:
                reply = (parse_tcp if tcp else parse_icmp)(self.version, data, responder)
            except Exception:  # noqa: BLE001 - a malformed packet from the network must not end the trace
                continue
            if reply is not None:
                self._answer(reply, kernel_timestamp_ns(ancillary), perf_ns)

    def _answer(self, reply: Reply, kernel_ns: int | None, perf_ns: int) -> None:
        if reply.protocol != self.settings.protocol or canonical_address(reply.destination) != self.destination:
            return
        flow_index = next((i for i, f in enumerate(self.flows) if f.source_port == reply.source_port), None)
        sent = self.in_flight.get(reply.identity)
        if flow_index is None or sent is None or sent.record.flow != flow_index:
            return
        seconds = (perf_ns - sent.perf_ns) / 1e9
        if kernel_ns is not None:
            kernel_seconds = (kernel_ns - sent.wall_ns) / 1e9
            if 0 <= kernel_seconds <= seconds:  # else the wall clock stepped in between
                seconds = kernel_seconds
        del self.in_flight[reply.identity]
        if seconds > float(self.settings.timeout):
            self.late += 1
        else:
            record = sent.record
            record.responder = canonical_address(reply.responder)
            record.rtt = seconds
            record.reached = reply.kind in ("echo_reply", "tcp") or record.responder == self.destination
            record.unreachable = reply.unreachable
            record.mpls = reply.mpls
        if not self.in_flight and self.all_answered is not None and not self.all_answered.done():
            self.all_answered.set_result(None)

    def expire(self) -> None:
        """Forget the probes whose time is up: they stay unanswered."""
        oldest_allowed = time.perf_counter_ns() - int(float(self.settings.timeout) * 1e9)
        for identity in [i for i, sent in self.in_flight.items() if sent.perf_ns < oldest_allowed]:
            del self.in_flight[identity]

    def settled(self) -> list[ProbeRecord]:
        """The probes answered or given up on: one still awaited is neither a reply nor a loss yet."""
        waiting = {id(sent.record) for sent in self.in_flight.values()}
        return [record for record in self.records if id(record) not in waiting]

    def destination_ttl(self, flow_index: int) -> int | None:
        reached = [r.ttl for r in self.records if r.flow == flow_index and r.reached]
        return min(reached, default=None)

    def last_answered_ttl(self) -> int:
        return max((r.ttl for r in self.records if r.responder is not None), default=0)


def _open_send_socket(family: socket.AddressFamily, protocol: str, source: str) -> socket.socket:
    try:
        sock = socket.socket(family, socket.SOCK_RAW, _PROTOCOL_NUMBERS[(protocol, family)])
    except PermissionError:
        raise MeasurementError("permission", _PERMISSION_HINT) from None
    sock.setblocking(False)
    try:
        sock.bind((source, 0))
    except OSError:
        sock.close()
        raise
    return sock


def _open_icmp_receiver(family: socket.AddressFamily) -> socket.socket:
    protocol = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    try:
        sock = socket.socket(family, socket.SOCK_RAW, protocol)
    except PermissionError:
        raise MeasurementError("permission", _PERMISSION_HINT) from None
    _filter_icmp_types(sock, family)
    return sock


def _filter_icmp_types(sock: socket.socket, family: socket.AddressFamily) -> None:
    """Let only echo replies and the errors that answer probes reach this raw ICMP socket."""
    sock.setblocking(False)
    enable_receive_timestamps(sock)
    wanted = _WANTED_ICMP[family]
    try:
        if family == socket.AF_INET:
            blocked = 0xFFFFFFFF
            for message_type in wanted:
                blocked &= ~(1 << message_type)
            sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", blocked))
        else:
            words = [0xFFFFFFFF] * 8
            for message_type in wanted:
                words[message_type >> 5] &= ~(1 << (message_type & 31))
            sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("8I", *words))
    except OSError:
        pass  # an optimisation only: replies are matched in user space as well


def _filter_tcp_source_port(sock: socket.socket, family: socket.AddressFamily, port: int) -> None:
    """A classic BPF program on a raw TCP socket: only segments from the target's `port` are queued.

    A raw IPv4 socket's packets start at the IP header (the program skips its length, `ldxb 4*([0]&0xf)`),
    a raw IPv6 socket's at the TCP header."""
    ld_h_abs, ld_h_ind, ldx_msh, jeq, ret = 0x28, 0x48, 0xB1, 0x15, 0x06
    program = ([(ldx_msh, 0, 0, 0), (ld_h_ind, 0, 0, 0)] if family == socket.AF_INET else [(ld_h_abs, 0, 0, 0)])
    program += [(jeq, 0, 1, port), (ret, 0, 0, 0xFFFF), (ret, 0, 0, 0)]
    instructions = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(instructions)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError:
        pass  # an optimisation only


def _source_address(family: socket.AddressFamily, destination: str, port: int) -> str:
    """The address the kernel sends from towards `destination` (a connected UDP socket sends nothing)."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((destination, port))
        except OSError as error:
            raise MeasurementError("unreachable", f"{destination}: {error.strerror}") from None
        return str(sock.getsockname()[0])


def _reserve_ports(family: socket.AddressFamily, protocol: str, source: str, count: int) -> list[socket.socket]:
    """Sockets bound to `count` free ports of the probes' transport, held for the trace's duration."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    reserved: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind)
            reserved.append(sock)
            sock.bind((source, 0))
    except OSError:
        for sock in reserved:
            sock.close()
        raise
    return reserved


async def measure(target: Target, settings: PathSettings) -> Outcome:
    """Trace the path to the target: its hops per flow, the destination's figures, a fingerprint."""
    try:
        host, port = split_host_port(target.address, settings.destination_port())
    except ValueError as error:
        raise MeasurementError("error", str(error)) from None
    if settings.port is not None:
        port = settings.port
    family, destination = await resolve(host, port, settings.family, socket.SOCK_DGRAM)
    destination = canonical_address(destination)
    asn_table = read_asn_table(settings.asn_file) if settings.asn_file else None
    source = _source_address(family, destination, port)
    loop = asyncio.get_running_loop()
    reserved: list[socket.socket] = []
    sockets: list[socket.socket] = []
    readers: list[int] = []
    try:
        if settings.protocol == "icmp":
            identifier = random.getrandbits(16)
            ports = [(identifier + i) & 0xFFFF for i in range(settings.flows)]
        else:
            reserved = _reserve_ports(family, settings.protocol, source, settings.flows)
            ports = [int(sock.getsockname()[1]) for sock in reserved]
        flows = [
            Flow(settings.protocol, 4 if family == socket.AF_INET else 6, source, destination, flow_port, port,
                 icmp_checksum=random.randrange(1, 0xFFFF), tcp_sequence_high=random.getrandbits(16))
            for flow_port in ports
        ]
        send_socket = _open_send_socket(family, settings.protocol, source)
        sockets.append(send_socket)
        if settings.protocol == "icmp":
            _filter_icmp_types(send_socket, family)
            receivers = [(send_socket, False)]
        else:
            icmp = _open_icmp_receiver(family)
            sockets.append(icmp)
            receivers = [(icmp, False)]
            if settings.protocol == "tcp":
                enable_receive_timestamps(send_socket)
                _filter_tcp_source_port(send_socket, family, port)
                receivers.append((send_socket, True))
        tracer = _Tracer(settings, family, destination, flows, send_socket, loop)
        for sock, tcp in receivers:
            loop.add_reader(sock.fileno(), tracer.on_readable, sock, tcp)
            readers.append(sock.fileno())
        await _run_rounds(tracer, target)
    finally:
        for fd in readers:
            loop.remove_reader(fd)
        for sock in [*sockets, *reserved]:
            sock.close()
    trace = aggregate(tracer.records, settings.flows)
    hops = await _annotate(trace.hops, asn_table, settings.reverse_dns)
    return _outcome(target, settings, destination, port, Trace(hops, trace.destination_ttl), tracer.late)


async def _run_rounds(tracer: _Tracer, target: Target) -> None:
    settings = tracer.settings
    loop = tracer.loop
    start = loop.time()
    for round_index in range(settings.rounds):
        await _sleep_until(loop, start + round_index * float(settings.round_interval))
        tracer.expire()
        limit = _round_limit(tracer)
        next_send = loop.time()
        for ttl in range(settings.first_ttl, limit + 1):
            ends = [tracer.destination_ttl(flow) for flow in range(settings.flows)]
            if all(end is not None and end < ttl for end in ends):
                break  # every flow's destination is nearer: probes further would only reach it again
            for flow_index in range(settings.flows):
                await _sleep_until(loop, next_send)
                tracer.send(flow_index, ttl, round_index)
                next_send += float(settings.packet_interval)
        report_path(target, lambda: aggregate(tracer.settled(), settings.flows).hops, round_index + 1, settings.rounds)
    if tracer.in_flight:
        tracer.all_answered = loop.create_future()
        last_sent = max(sent.perf_ns for sent in tracer.in_flight.values())
        remaining = (last_sent - time.perf_counter_ns()) / 1e9 + float(settings.timeout)
        if remaining > 0:
            try:
                async with asyncio.timeout(remaining):
                    await tracer.all_answered
            except TimeoutError:
                pass
    tracer.in_flight.clear()


def _round_limit(tracer: _Tracer) -> int:
    """The highest TTL this round probes: the farthest destination once every flow reached it, else
    `gap_limit` past the last TTL that answered (`max_ttl` while nothing is known)."""
    settings = tracer.settings
    ends = [tracer.destination_ttl(flow) for flow in range(settings.flows)]
    if all(end is not None for end in ends):
        return max(end for end in ends if end is not None)
    answered = tracer.last_answered_ttl()
    if not answered or not tracer.records:
        return settings.max_ttl
    return min(settings.max_ttl, answered + settings.gap_limit)


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _annotate(hops: list[Hop], asn_table: AsnTable | None, reverse_dns: bool) -> list[Hop]:
    """Hops with their AS number (from the local table) and, when asked, their reverse names."""
    names: dict[str, str] = {}
    if reverse_dns:
        addresses = sorted({hop.address for hop in hops if hop.address})
        found = await asyncio.gather(*(_reverse_name(address) for address in addresses))
        names = {address: name for address, name in zip(addresses, found) if name}
    annotated = []
    for hop in hops:
        changes: dict[str, object] = {}
        if hop.address and asn_table is not None:
            asn = asn_table.lookup(hop.address)
            if asn is not None:
                changes["asn"] = asn
        if hop.address in names:
            changes["name"] = names[hop.address]
        annotated.append(msgspec.structs.replace(hop, **changes) if changes else hop)
    return annotated


async def _reverse_name(address: str) -> str | None:
    try:
        async with asyncio.timeout(_REVERSE_DNS_TIMEOUT):
            name, _ = await asyncio.get_running_loop().getnameinfo((address, 0), socket.NI_NAMEREQD)
    except (OSError, TimeoutError, UnicodeError):
        return None
    return str(name)[:255]


# (target name, address, protocol, port, flows) -> the fingerprint of the last trace that reached it
_last_paths: OrderedDict[tuple[str, str, str, int, int], str] = OrderedDict()


def _path_change(key: tuple[str, str, str, int, int], current: str) -> str | None:
    """The previous fingerprint when `current` differs from it, else None; `current` is remembered."""
    previous = _last_paths.pop(key, None)
    _last_paths[key] = current
    while len(_last_paths) > _MAX_REMEMBERED_PATHS:
        _last_paths.popitem(last=False)
    return previous if previous is not None and previous != current else None


def _outcome(target: Target, settings: PathSettings, destination: str, port: int, trace: Trace, late: int) -> Outcome:
    main = trace.flow_hops(0)
    end_ttl = trace.destination_ttl.get(0)
    last = main[-1] if main else None
    figures: dict[str, float] = {
        "hop_count": float(end_ttl if end_ttl is not None else (last.ttl if last else 0)),
        "destination_reached": 1.0 if trace.reached else 0.0,
        "rate_limited_hops": float(sum(hop.rate_limited for hop in trace.hops)),
        "probes_sent": float(sum(hop.sent for hop in trace.hops)),
        "probes_received": float(sum(hop.received for hop in trace.hops)),
        "flows": float(settings.flows),
    }
    current = fingerprint(trace.hops)
    info = {"address": destination, "protocol": settings.protocol, "fingerprint": current}
    if settings.protocol != "icmp":
        info["port"] = str(port)
    if late:
        info["late_replies"] = str(late)
    if end_ttl is not None and last is not None:
        for name in ("rtt_min_seconds", "rtt_median_seconds", "rtt_max_seconds"):
            value = getattr(last, name)
            if value is not None:
                figures[name] = value
        figures["loss_ratio"] = last.loss_ratio
    error = detail = None
    if trace.reached:
        key = (target.name, target.address, settings.protocol, port, settings.flows)
        previous = _path_change(key, current)
        figures["path_changes"] = 1.0 if previous else 0.0
        if previous:
            info["previous_fingerprint"] = previous
    else:
        stop = next((hop for hop in trace.hops if hop.unreachable), None)
        if stop is not None:
            error = "unreachable"
            detail = f"hop {stop.ttl} ({stop.address}) answered {stop.unreachable} unreachable for {destination}"
        else:
            error = "timeout"
            answered = [hop for hop in main if hop.address]
            where = f"; the last hop that answered: {answered[-1].ttl} ({answered[-1].address})" if answered else ""
            detail = f"{destination} did not answer within {settings.max_ttl} hops{where}"
    return Outcome(figures=figures, info=info, hops=trace.hops, error=error, detail=detail)
