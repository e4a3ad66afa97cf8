"""DNS lookup: one query of `query_name`/`query_type` to one resolver over UDP or TCP, timed tightly.

Figures: `lookup_seconds` (query sent → answer received), `answer_count` (resource records in the answer
section, as dig's `ANSWER:`), `rcode_value` (numeric rcode, extended rcode included), and over TCP
`connect_seconds` (the TCP handshake, kept out of `lookup_seconds` as dig does).
Info: `rcode` (NOERROR, NXDOMAIN, ...), `resolver` (ip:port as queried), `query_name`, `query_type`,
`protocol`, `flags` (header flags of the answer, e.g. `QR RD RA`), `answer` (first record of the query's
type, else the first record, as rdata text, truncated to 255 characters).

Timing. `lookup_seconds` matches dig's "Query time": the clock is read right before the query is sent
and right after the answer arrives; no retries (dig `+tries=1`). Over UDP the arrival time is the
kernel's receive timestamp (SO_TIMESTAMPNS), so a busy event loop does not add to the figure; the send
time is the kernel's software send timestamp (SO_TIMESTAMPING, from the error queue), else a clock read
right before `send()`. All are CLOCK_REALTIME, so the pair is checked against the
monotonic perf_counter pair and the latter is used if a clock step made them disagree. Over TCP the
arrival time is read in `data_received` when the last byte of the answer is in.

Outcomes: NOERROR → success (also with no answers: NODATA is an answer); NXDOMAIN → `nxdomain`;
SERVFAIL → `servfail`; other rcodes → `dns_error` (all three keep the figures: the resolver answered);
no answer within `timeout` → `timeout`; ICMP port unreachable or TCP RST → `refused`; an answer that
does not parse → `protocol`. Answers whose id or question do not match the query are ignored (spoofing,
stray replies), so they end as `timeout`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from qiancheng.core.addresses import (
    UNREACHABLE_ERRNOS,
    enable_receive_timestamps,
    enable_send_timestamps,
    kernel_timestamp_ns,
    send_timestamp_ns,
    split_host_port,
)
from qiancheng.core.errors import MeasurementError
from qiancheng.core.kind_settings import DnsSettings
from qiancheng.core.result import Target

from .outcome import Outcome

__all__ = ["measure", "split_host_port"]


# EDNS(0) with the 1232-byte payload of DNS flag day 2020, as resolvers and dig use by default, so that
# answers of usual size are not truncated over UDP.
_EDNS_PAYLOAD = 1232
_MAX_ANSWER_TEXT = 255
_RECEIVE_BUFFER = 65_535
_LOOPED_PACKET_BYTES = 64  # the error queue also returns the sent packet; only the stamp is needed
_ERRQUEUE_ANCILLARY_BYTES = 512




async def _resolver_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """The socket family and address of the resolver; a host name is resolved (not timed)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except socket.gaierror as error:
            raise MeasurementError("resolve", f"resolver {host}: {error.strerror}") from None
        except UnicodeError as error:  # not encodable as IDNA: no resolver could find it
            raise MeasurementError("resolve", f"resolver {host}: {error}") from None
        family, _, _, _, address = infos[0]
        return family, (str(address[0]), port)
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), (str(ip), port)


@dataclass(frozen=True, slots=True)
class _Exchange:
    """What one query/answer exchange gave: the parsed answer and its timing in seconds."""

    answer: dns.message.Message
    lookup_seconds: float
    connect_seconds: float | None = None
    send_timestamps: str = "clock"  # `kernel` when the send time is the kernel's (UDP only)


class _UdpExchange:
    """One query over a connected UDP socket; the answer's arrival time comes from the kernel."""

    def __init__(self, family: socket.AddressFamily, address: tuple[str, int], query: dns.message.Message) -> None:
        self._loop = asyncio.get_running_loop()
        self._query = query
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        enable_receive_timestamps(self._sock)
        self._send_timestamps = enable_send_timestamps(self._sock)
        self._address = address
        self._done: asyncio.Future[_Exchange] = self._loop.create_future()
        self._sent_wall_ns = 0
        self._sent_kernel_ns = 0  # the kernel's send timestamp, once read from the error queue
        self._sent_ns = 0

    async def run(self) -> _Exchange:
        try:
            # Connected, so that the kernel drops datagrams from other sources and reports ICMP port
            # unreachable as ECONNREFUSED on the next receive.
            self._sock.connect(self._address)
            wire = self._query.to_wire()
            self._loop.add_reader(self._sock.fileno(), self._on_readable)
            self._sent_wall_ns = time.time_ns()
            self._sent_ns = time.perf_counter_ns()
            self._sock.send(wire)
            return await self._done
        finally:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def _on_readable(self) -> None:
        if self._done.done():
            return
        if self._send_timestamps and not self._sent_kernel_ns:
            self._read_send_timestamp()
        try:
            data, ancillary, _, _ = self._sock.recvmsg(_RECEIVE_BUFFER, socket.CMSG_SPACE(16))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._done.set_exception(error)
            return
        received_ns = time.perf_counter_ns()
        try:
            answer = dns.message.from_wire(data)
        except dns.exception.DNSException as error:
            self._done.set_exception(MeasurementError("protocol", f"answer does not parse: {error}"))
            return
        if not self._query.is_response(answer):
            return  # a stray or spoofed datagram: keep waiting for ours
        seconds = (received_ns - self._sent_ns) / 1e9
        send_clock = "clock"
        kernel_ns = kernel_timestamp_ns(ancillary)
        if kernel_ns is not None:
            kernel_seconds = (kernel_ns - (self._sent_kernel_ns or self._sent_wall_ns)) / 1e9
            # The kernel stamped the datagram before we read it; outside 0..seconds the wall clock stepped.
            if 0 <= kernel_seconds <= seconds:
                seconds = kernel_seconds
                send_clock = "kernel" if self._sent_kernel_ns else "clock"
        self._done.set_result(_Exchange(answer, seconds, send_timestamps=send_clock))

    def _read_send_timestamp(self) -> None:
        """The query's send time from the error queue (one query per socket: the first stamp is ours)."""
        try:
            _, ancillary, _, _ = self._sock.recvmsg(_LOOPED_PACKET_BYTES, _ERRQUEUE_ANCILLARY_BYTES, socket.MSG_ERRQUEUE)
        except OSError:  # nothing queued (yet), or no error queue on this socket
            return
        self._sent_kernel_ns = send_timestamp_ns(ancillary) or 0


class _TcpAnswer(asyncio.Protocol):
    """Collects one length-prefixed answer (RFC 1035 §4.2.2) and stamps the arrival of its last byte."""

    def __init__(self, done: asyncio.Future[tuple[bytes, int]]) -> None:
        self._buffer = bytearray()
        self._done = done

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= 2 and not self._done.done():
            length = int.from_bytes(self._buffer[:2], "big")
            if len(self._buffer) >= 2 + length:
                self._done.set_result((bytes(self._buffer[2 : 2 + length]), time.perf_counter_ns()))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(MeasurementError("protocol", "connection closed before a whole answer"))


async def _tcp_exchange(family: socket.AddressFamily, address: tuple[str, int], query: dns.message.Message) -> _Exchange:
    """One query over a fresh TCP connection; the handshake is timed apart from the lookup."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[bytes, int]] = loop.create_future()
    started_ns = time.perf_counter_ns()
    transport, _ = await loop.create_connection(lambda: _TcpAnswer(done), address[0], address[1], family=family)
    connected_ns = time.perf_counter_ns()
    try:
        wire = query.to_wire(prepend_length=True)
        sent_ns = time.perf_counter_ns()
        transport.write(wire)
        data, received_ns = await done
    finally:
        transport.abort()
    try:
        answer = dns.message.from_wire(data)
    except dns.exception.DNSException as error:
        raise MeasurementError("protocol", f"answer does not parse: {error}") from None
    if not query.is_response(answer):
        raise MeasurementError("protocol", "answer does not match the query (id or question)")
    return _Exchange(answer, (received_ns - sent_ns) / 1e9, (connected_ns - started_ns) / 1e9)


def _first_answer(answer: dns.message.Message, rdtype: dns.rdatatype.RdataType) -> str:
    """Text of the first record of the queried type (else of the first record), or ''."""
    rrsets = sorted(answer.answer, key=lambda rrset: rrset.rdtype != rdtype)  # stable: keeps wire order
    for rrset in rrsets:
        for rdata in rrset:
            return str(rdata.to_text())[:_MAX_ANSWER_TEXT]
    return ""


def _names(target: Target, settings: DnsSettings) -> tuple[str, int, str]:
    """Resolver host, resolver port and query name from the target and settings."""
    try:
        if settings.resolver:
            host, port = split_host_port(settings.resolver, settings.port)
            query_name = settings.query_name or split_host_port(target.address, settings.port)[0]
        else:
            host, port = split_host_port(target.address, settings.port)
            query_name = settings.query_name or ""
    except ValueError as error:
        raise MeasurementError("error", str(error)) from None
    if not query_name:
        raise MeasurementError("error", "no query name: set query_name when the target is the resolver")
    return host, port, query_name


def _error_for(error: OSError) -> MeasurementError:
    if isinstance(error, MeasurementError):
        return error
    if isinstance(error, ConnectionRefusedError):
        return MeasurementError("refused", "resolver refused the query (port unreachable or TCP reset)")
    if error.errno in UNREACHABLE_ERRNOS:
        return MeasurementError("unreachable", error.strerror or str(error))
    if isinstance(error, ConnectionError):
        return MeasurementError("protocol", f"connection broken: {error}")
    return MeasurementError("error", f"{type(error).__name__}: {error}")


async def measure(target: Target, settings: DnsSettings) -> Outcome:
    """One lookup: figures in seconds and counts, and a reason when the answer is bad."""
    host, port, query_name = _names(target, settings)
    rdtype = dns.rdatatype.from_text(settings.query_type)
    try:
        query = dns.message.make_query(query_name, rdtype, use_edns=0, payload=_EDNS_PAYLOAD)
    except dns.exception.DNSException as error:
        raise MeasurementError("error", f"bad query name {query_name!r}: {error}") from None
    family, address = await _resolver_address(host, port)
    resolver = f"[{address[0]}]:{address[1]}" if family == socket.AF_INET6 else f"{address[0]}:{address[1]}"
    try:
        async with asyncio.timeout(float(settings.timeout)):
            if settings.protocol == "tcp":
                exchange = await _tcp_exchange(family, address, query)
            else:
                exchange = await _UdpExchange(family, address, query).run()
    except TimeoutError:
        raise MeasurementError("timeout", f"no answer from {resolver} within {float(settings.timeout):g} s") from None
    except OSError as error:
        raise _error_for(error) from None

    answer = exchange.answer
    rcode = answer.rcode()
    figures = {
        "lookup_seconds": exchange.lookup_seconds,
        "answer_count": float(sum(len(rrset) for rrset in answer.answer)),
        "rcode_value": float(rcode),
    }
    if exchange.connect_seconds is not None:
        figures["connect_seconds"] = exchange.connect_seconds
    info = {
        "rcode": dns.rcode.to_text(rcode),
        "resolver": resolver,
        "query_name": query.question[0].name.to_text(omit_final_dot=True)[:255],
        "query_type": settings.query_type,
        "protocol": settings.protocol,
        "send_timestamps": exchange.send_timestamps,
        "flags": dns.flags.to_text(answer.flags),
    }
    if first := _first_answer(answer, rdtype):
        info["answer"] = first
    reason = {dns.rcode.NOERROR: None, dns.rcode.NXDOMAIN: "nxdomain", dns.rcode.SERVFAIL: "servfail"}.get(
        rcode, "dns_error"
    )
    return Outcome(
        error=reason,
        detail=None if reason is None else f"{info['rcode']} from {resolver} for {info['query_name']} {settings.query_type}",
        figures=figures,
        info=info,
    )
