"""HTTP(S) GET timed by phase on our own socket, so that each boundary is exact (dns, connect, tls, ttfb).

One request per test on a fresh connection (`Connection: close`, no TLS session resumption, redirects
not followed), HTTP/1.1 framed by h11, the body read in chunks and discarded.

Marks are read with perf_counter right at each boundary and reported as seconds since the start (the
clock read right before name resolution), under the names of curl's `-w` variables:

- `time_namelookup_seconds`: getaddrinfo done; 0 for an IP literal (curl shows a few µs there).
- `time_connect_seconds`: TCP handshake done (as curl; includes attempts on earlier addresses that
  failed, tried in getaddrinfo order, one at a time).
- `time_appconnect_seconds`: TLS handshake done; 0 for plain http (as curl).
- `time_pretransfer_seconds`: right before the request is written (as curl).
- `time_starttransfer_seconds`: first response byte received (decrypted, for https; as curl).
- `time_total_seconds`: last body byte received, or the close that ends a close-delimited body.

Phase durations: `dns_seconds` = namelookup; `connect_seconds` = connect − namelookup; `tls_seconds` =
appconnect − connect (0 for http); `ttfb_seconds` = starttransfer − pretransfer (request sent → first
byte, curl's time_starttransfer − time_pretransfer); `total_seconds` = time_total. Hence
dns + connect + tls + ttfb ≤ total. Also `status_code`, `bytes` (body bytes, after de-chunking, as curl's
size_download) and `header_bytes` (status lines and headers of every response including 1xx, as curl's
size_header).

Info: `address` (peer IP), `http_version` (`1.1`), `tls_version` (`TLSv1.3`, https only), and when the
response carries them `server`, `x_cache`, `cf_cache_status`, `age`, `via`.

Outcomes: a status outside `expected_status` → `http_status` (figures kept); name not resolved →
`resolve`; TCP reset → `refused`; no route → `unreachable`; no progress before `timeout` (one deadline
for the whole test) → `timeout`; handshake or certificate failure → `tls_error`; a response h11 cannot
parse → `protocol`; a body past `max_bytes` → `error` "body exceeds max_bytes". Failed results keep the
figures of the phases that completed.

Each mark is read where the event happens rather than when the waiting task resumes: in the resolver
thread as getaddrinfo returns, in the loop's writable callback as the handshake completes, in the
protocol's connection_made as TLS completes, in data_received for the first and last bytes. These are
still clock reads on the event loop, so a busy loop can delay them; kernel timestamps are not available
through asyncio's TLS transport. Creating the verifying TLS context (loading the CA store) happens once,
in a thread.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
import time
from dataclasses import replace
from typing import Any

import h11

from .. import __version__
from ..clock import monotonic, wall_ns
from ..errors import MeasurementError
from ..result import Result, Target
from ..settings import HttpSettings
from .http_phases import Marks, RequestPlan, header_block_end, parse_url, phase_figures, request_headers, response_info

__all__ = ["measure", "USER_AGENT"]

KIND = "http"
USER_AGENT = f"qiancheng/{__version__}"

_UNREACHABLE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})

# Verifying and non-verifying client contexts, built once: loading the CA store reads many files.
_contexts: dict[bool, ssl.SSLContext] = {}


async def _tls_context(verify: bool) -> ssl.SSLContext:
    """The client TLS context; the first call builds it in a thread so the loop never blocks on disk."""
    context = _contexts.get(verify)
    if context is None:
        context = await asyncio.to_thread(_new_context, verify)
        _contexts[verify] = context
    return context


def _new_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context() if verify else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])  # we speak HTTP/1.1 only; never let a server pick h2
    return context


class _ResponseReader(asyncio.Protocol):
    """Sends the request once connected, then feeds received bytes to h11 as they arrive, stamping each
    boundary as it happens; keeps no body."""

    def __init__(self, connection: h11.Connection, request: bytes, max_bytes: int, done: asyncio.Future[None]) -> None:
        self._connection = connection
        self._request = request
        self._max_bytes = max_bytes
        self._done = done
        self._transport: asyncio.Transport | None = None
        self._head = bytearray()  # bytes received until the final response's headers are parsed
        self._informational = 0
        self.connected_ns: int | None = None
        self.request_sent_ns: int | None = None
        self.first_byte_ns: int | None = None
        self.last_byte_ns: int | None = None
        self.response: h11.Response | None = None
        self.header_bytes = 0
        self.body_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Over TLS asyncio calls this the moment the handshake is done: the exact appconnect mark, taken
        # before the waiting task resumes.
        self.connected_ns = time.perf_counter_ns()
        assert isinstance(transport, asyncio.Transport)  # TCP and TLS transports both are
        self._transport = transport
        # The request goes out from here, not after the waiting task resumes, so that no loop turn of
        # ours sits between the handshake and the request (curl's appconnect and pretransfer are µs apart).
        self.request_sent_ns = time.perf_counter_ns()
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        if self.first_byte_ns is None:
            self.first_byte_ns = now
        if self.response is None:
            self._head += data
        self._feed(data, now)

    def eof_received(self) -> bool:
        self._feed(b"", time.perf_counter_ns())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and not self._done.done():
            self._feed(b"", time.perf_counter_ns())  # a close may end a close-delimited body
        if not self._done.done():
            why = f": {exc}" if exc else ""
            self._done.set_exception(MeasurementError("error", f"connection closed before the response ended{why}"))

    def _feed(self, data: bytes, now: int) -> None:
        """Hand bytes (b'' for EOF) to h11 and act on every event it can now produce."""
        if self._done.done():
            return
        try:
            self._connection.receive_data(data)
            while True:
                event = self._connection.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                if isinstance(event, h11.InformationalResponse):
                    self._informational += 1
                elif isinstance(event, h11.Response):
                    self.response = event
                    self.header_bytes = header_block_end(self._head, self._informational + 1) or 0
                    self._head = bytearray()
                elif isinstance(event, h11.Data):
                    self.body_bytes += len(event.data)
                    if self.body_bytes > self._max_bytes:
                        self._fail(MeasurementError("error", "body exceeds max_bytes"))
                        return
                elif isinstance(event, h11.EndOfMessage):
                    self.last_byte_ns = now
                    self._done.set_result(None)
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    self._fail(MeasurementError("protocol", "connection closed before the response ended"))
                    return
        except h11.RemoteProtocolError as error:
            self._fail(MeasurementError("protocol", f"bad HTTP response: {error}"))

    def _fail(self, error: MeasurementError) -> None:
        if not self._done.done():
            self._done.set_exception(error)
        if self._transport is not None:
            self._transport.abort()


def _connect_error(error: OSError, where: str) -> MeasurementError:
    if isinstance(error, ConnectionRefusedError):
        return MeasurementError("refused", f"connection refused by {where}")
    if error.errno in _UNREACHABLE_ERRNOS:
        return MeasurementError("unreachable", f"{where}: {error.strerror}")
    return MeasurementError("error", f"connect to {where}: {error}")


def _lookup(host: str, port: int) -> tuple[list[tuple[Any, ...]], int]:
    """getaddrinfo, run in a thread, and the perf_counter ns it returned at (not when the loop noticed)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return infos, time.perf_counter_ns()


async def _connect_stamped(sock: socket.socket, address: tuple[str, int]) -> int:
    """Connect the non-blocking `sock`; perf_counter ns of the handshake's end, OSError if it failed.

    The mark is read in the loop's writable callback, as the TCP kind does, rather than when the task
    waiting here resumes one loop iteration later.
    """
    loop = asyncio.get_running_loop()
    try:
        sock.connect(address)
        return time.perf_counter_ns()
    except (BlockingIOError, InterruptedError):
        pass
    writable: asyncio.Future[int] = loop.create_future()

    def on_writable() -> None:
        if not writable.done():
            writable.set_result(time.perf_counter_ns())

    loop.add_writer(sock.fileno(), on_writable)
    try:
        connected_ns = await writable
    finally:
        loop.remove_writer(sock.fileno())
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))  # OSError picks the matching subclass (ConnectionRefusedError)
    return connected_ns


def _prepared_request(plan: RequestPlan, settings: HttpSettings) -> tuple[h11.Connection, bytes]:
    """The h11 connection and the request's bytes, built before the clock starts; error if headers are bad."""
    connection = h11.Connection(h11.CLIENT)
    try:
        request = h11.Request(
            method=settings.method, target=plan.target, headers=request_headers(plan, USER_AGENT, settings.headers)
        )
        wire = (connection.send(request) or b"") + (connection.send(h11.EndOfMessage()) or b"")
    except h11.LocalProtocolError as error:
        raise MeasurementError("error", f"bad request: {error}") from None
    return connection, wire


class _Exchange:
    """One request on a fresh connection; `marks` and `info` grow as phases complete, for partial results.

    Everything that is not network (request bytes, TLS context) is ready before the start mark, so
    that no phase is charged for our own preparation.
    """

    def __init__(
        self,
        plan: RequestPlan,
        settings: HttpSettings,
        connection: h11.Connection,
        wire: bytes,
        context: ssl.SSLContext | None,
    ) -> None:
        self.plan = plan
        self.settings = settings
        self._connection = connection
        self._wire = wire
        self._context = context
        self.marks = Marks(start=time.perf_counter_ns())
        self.phase = "dns"
        self.info: dict[str, str] = {}
        self.reader: _ResponseReader | None = None
        self._transport: asyncio.Transport | None = None

    async def run(self) -> None:
        self.marks = Marks(start=time.perf_counter_ns())
        try:
            addresses = await self._resolve()
            sock = await self._connect(addresses)
            await self._start(sock)
        finally:
            if self._transport is not None:
                self._transport.abort()  # the test is over either way; no graceful TLS close to time

    async def _resolve(self) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
        loop = asyncio.get_running_loop()
        plan = self.plan
        if plan.is_ip_literal:
            family = socket.AF_INET6 if ":" in plan.host else socket.AF_INET
            addresses = [(family, (plan.host, plan.port))]
            self.marks = replace(self.marks, namelookup=self.marks.start)
        else:
            try:
                infos, resolved_ns = await loop.run_in_executor(None, _lookup, plan.host, plan.port)
            except socket.gaierror as error:
                raise MeasurementError("resolve", f"{plan.host}: {error.strerror}") from None
            except UnicodeError as error:  # not encodable as IDNA: no resolver could find it
                raise MeasurementError("resolve", f"{plan.host}: {error}") from None
            self.marks = replace(self.marks, namelookup=resolved_ns)
            addresses = [(info[0], (str(info[4][0]), int(info[4][1]))) for info in infos]
        return addresses

    async def _connect(self, addresses: list[tuple[socket.AddressFamily, tuple[str, int]]]) -> socket.socket:
        self.phase = "connect"
        last_error: OSError | None = None
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the request goes out at once
                connected_ns = await _connect_stamped(sock, address)
            except OSError as error:
                sock.close()
                last_error = error
                continue
            except BaseException:  # cancelled by the deadline: do not leak the socket
                sock.close()
                raise
            self.marks = replace(self.marks, connect=connected_ns)
            self.info["address"] = address[0]
            return sock
        assert last_error is not None  # getaddrinfo never returns an empty list
        raise _connect_error(last_error, f"{self.plan.host} port {self.plan.port}")

    async def _start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        plan, settings, context = self.plan, self.settings, self._context
        done: asyncio.Future[None] = loop.create_future()
        reader = _ResponseReader(self._connection, self._wire, int(settings.max_bytes), done)
        if context is not None:
            self.phase = "tls"
            try:
                # SNI is the URL's host; Python sends none for an IP literal (RFC 6066 §3) and then
                # checks the certificate's IP addresses instead.
                self._transport, _ = await loop.create_connection(
                    lambda: reader, sock=sock, ssl=context, server_hostname=plan.host
                )
            except ssl.SSLCertVerificationError as error:
                sock.close()
                raise MeasurementError("tls_error", f"certificate: {error.verify_message}") from None
            except (ssl.SSLError, ConnectionError) as error:
                sock.close()
                raise MeasurementError("tls_error", f"handshake: {error}") from None
            except BaseException:
                sock.close()
                raise
            self.marks = replace(self.marks, appconnect=reader.connected_ns or time.perf_counter_ns())
            ssl_object = self._transport.get_extra_info("ssl_object")
            if isinstance(ssl_object, ssl.SSLObject) and (version := ssl_object.version()):
                self.info["tls_version"] = version
        else:
            try:
                self._transport, _ = await loop.create_connection(lambda: reader, sock=sock)
            except BaseException:
                sock.close()
                raise
        self.reader = reader
        self.phase = "ttfb"
        self.marks = replace(self.marks, pretransfer=reader.request_sent_ns)
        await done

    def phase_reached(self) -> str:
        """The phase under way: dns, connect, tls, ttfb or body."""
        if self.phase == "ttfb" and self.reader is not None and self.reader.first_byte_ns is not None:
            return "body"
        return self.phase

    def result_parts(self) -> tuple[dict[str, float], dict[str, str]]:
        """Figures and info of whatever was reached, for success and failure alike."""
        marks, info = self.marks, dict(self.info)
        reader = self.reader
        if reader is not None:
            marks = replace(marks, starttransfer=reader.first_byte_ns, total=reader.last_byte_ns)
        figures = phase_figures(marks, self.plan.tls)
        if reader is not None and reader.response is not None:
            response = reader.response
            figures["status_code"] = float(response.status_code)
            figures["header_bytes"] = float(reader.header_bytes)
            figures["bytes"] = float(reader.body_bytes)
            info["http_version"] = response.http_version.decode("ascii", "replace")
            info.update(response_info(response.headers.raw_items()))
        return figures, info


async def measure(target: Target, settings: HttpSettings) -> Result:
    """One request timed by phase; figures in seconds and bytes, a failed result with a reason otherwise."""
    start_ns, started = wall_ns(), monotonic()
    url = settings.url or target.address
    try:
        plan = parse_url(url)
    except ValueError as error:
        raise MeasurementError("error", str(error)) from None
    connection, wire = _prepared_request(plan, settings)
    context = await _tls_context(settings.verify_tls) if plan.tls else None
    exchange = _Exchange(plan, settings, connection, wire, context)
    reason: str | None = None
    detail = ""
    try:
        async with asyncio.timeout(float(settings.timeout)):
            await exchange.run()
    except TimeoutError:
        reason, detail = "timeout", f"{exchange.phase_reached()} not done within {float(settings.timeout):g} s"
    except MeasurementError as error:
        reason, detail = error.reason, error.detail
    figures, info = exchange.result_parts()
    status = int(figures.get("status_code", 0))
    if reason is None and status not in settings.expected_status:
        expected = ", ".join(str(code) for code in settings.expected_status)
        reason, detail = "http_status", f"status {status}, expected {expected}"
    return Result(
        kind=KIND,
        target=target,
        start_ns=start_ns,
        duration_seconds=max(0.0, monotonic() - started),
        success=reason is None,
        error=reason,
        detail=detail[:1024] or None,
        figures=figures,
        info=info,
    )
