"""HTTP(S) GET timed by phase on our own socket, so that each boundary is exact (dns, connect, tls, ttfb).

One request per test on a fresh connection (`Connection: close`, no TLS session resumption, redirects
not followed), HTTP/1.1 framed by h11. The body is discarded: h11 parses the head and any chunked or
close-delimited body; past the first read, a Content-Length body is only counted, with no copy per
byte (MSG_TRUNC over plain TCP), so that the reader keeps up with a gigabit on a quarter of a core.

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
response carries them `server`, `x_cache`, `cf_cache_status`, `age`, `via`. CDN cache facts (cdn.py):
figures `cdn_cache_hit`, `cdn_age_seconds`, info `cache_status`, `cache_header`, `edge`.

Outcomes: a status outside `expected_status` → `http_status` (figures kept); name not resolved →
`resolve`; TCP reset → `refused`; no route → `unreachable`; no progress before `timeout` (one deadline
for the whole test) → `timeout`; handshake or certificate failure → `tls_error`; a response h11 cannot
parse → `protocol`; a body past `max_bytes` → `error` "body exceeds max_bytes". Failed results keep the
figures of the phases that completed.

The exchange runs in a thread of its own as plain blocking calls (getaddrinfo, connect, the TLS handshake,
send, recv), each done in C without the GIL, and each mark is read as the call returns, as curl reads
its marks around its own calls. Marks read on the event loop instead carried a turn or two of the loop
each (0.1-0.3 ms on a small box), which added up to about 1 ms in time_total. A busy event loop can
still delay a mark, by at most the interpreter's switch interval (5 ms) while it holds the GIL. Creating
the verifying TLS context (loading the CA store) happens once, in a thread.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import threading
import time
from dataclasses import replace

import h11

from qiancheng.core import __version__
from qiancheng.core.errors import MeasurementError
from qiancheng.core.kind_settings import HttpSettings
from qiancheng.core.result import Target

from .cdn import cache_facts
from .discard import discard
from .http_phases import Marks, RequestPlan, header_block_end, parse_url, phase_figures, request_headers, response_info
from .outcome import Outcome

__all__ = ["measure", "USER_AGENT"]

USER_AGENT = f"qiancheng/{__version__}"

_UNREACHABLE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})
_HEAD_RECEIVE_BYTES = 64 * 1024
_RECEIVE_BYTES = 256 * 1024
# How long past the test's timeout the caller waits for the exchange thread, whose socket calls keep
# the deadline themselves; only a getaddrinfo that outlives it is cut off here.
_DEADLINE_SLACK_SECONDS = 0.05

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


class _ResponseParser:
    """Feeds received bytes to h11, counting header and body bytes; keeps no body."""

    def __init__(self, connection: h11.Connection, max_bytes: int) -> None:
        self._connection = connection
        self._max_bytes = max_bytes
        self._head = bytearray()  # bytes received until the final response's headers are parsed
        self._informational = 0
        self.response: h11.Response | None = None
        self.header_bytes = 0
        self.body_bytes = 0

    def feed(self, data: bytes) -> bool:
        """Hand bytes (b'' for EOF) to h11; True once the response has ended, MeasurementError if it is bad."""
        if self.response is None:
            self._head += data
        try:
            self._connection.receive_data(data)
            while True:
                event = self._connection.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return False
                if isinstance(event, h11.InformationalResponse):
                    self._informational += 1
                elif isinstance(event, h11.Response):
                    self.response = event
                    self.header_bytes = header_block_end(self._head, self._informational + 1) or 0
                    self._head = bytearray()
                elif isinstance(event, h11.Data):
                    self.body_bytes += len(event.data)
                    if self.body_bytes > self._max_bytes:
                        raise MeasurementError("error", "body exceeds max_bytes")
                elif isinstance(event, h11.EndOfMessage):
                    return True
                elif isinstance(event, h11.ConnectionClosed):
                    raise MeasurementError("protocol", "connection closed before the response ended")
        except h11.RemoteProtocolError as error:
            raise MeasurementError("protocol", f"bad HTTP response: {error}") from None

    def content_left(self) -> int | None:
        """Body bytes still to come when the final response is framed by Content-Length alone, else None.

        Asked once h11 has handed over every byte fed so far: the rest of such a body needs no parsing, only
        counting, so it can bypass h11 (whose buffering copies every byte twice). Chunked bodies, and those
        that end at the close, stay with h11.
        """
        response = self.response
        if response is None or self._connection.their_state is not h11.SEND_BODY:
            return None
        length: int | None = None
        for name, value in response.headers:
            if name == b"transfer-encoding":
                return None
            if name == b"content-length":
                length = int(value)  # h11 has checked it: digits, and equal if repeated
        return None if length is None else length - self.body_bytes

    def count_body(self, received: int) -> None:
        """Count body bytes read past h11 (see content_left)."""
        self.body_bytes += received
        if self.body_bytes > self._max_bytes:
            raise MeasurementError("error", "body exceeds max_bytes")


def _connect_error(error: OSError, where: str) -> MeasurementError:
    if isinstance(error, ConnectionRefusedError):
        return MeasurementError("refused", f"connection refused by {where}")
    if error.errno in _UNREACHABLE_ERRNOS:
        return MeasurementError("unreachable", f"{where}: {error.strerror}")
    return MeasurementError("error", f"connect to {where}: {error}")


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
    """One request on a fresh connection, made by blocking calls in a thread of its own.

    Each blocking call (getaddrinfo, connect, the TLS handshake, recv) runs in C without the GIL, and the
    clock is read the moment it returns, so no turn of the event loop lies between an event and its mark.
    `marks`, `info` and `phase` grow as phases complete, for partial results. Everything that is not
    network (request bytes, TLS context) is ready before the start mark.
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
        self._wire = wire
        self._context = context
        self._deadline = 0.0
        self.parser = _ResponseParser(connection, int(settings.max_bytes))
        self.marks = Marks(start=time.perf_counter_ns())
        self.phase = "dns"
        self.info: dict[str, str] = {}
        self.first_byte_ns: int | None = None
        self.last_byte_ns: int | None = None

    def run(self) -> None:
        """The whole exchange (blocking: call it in a thread); MeasurementError or TimeoutError if it fails."""
        self._deadline = time.monotonic() + float(self.settings.timeout)
        self.marks = Marks(start=time.perf_counter_ns())
        sock = self._connect(self._resolve())
        try:
            if self._context is not None:
                sock = self._handshake(sock, self._context)
            self._exchange(sock)
        finally:
            sock.close()  # the test is over either way; no graceful TLS close to time

    def _remaining(self) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    def _resolve(self) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
        plan = self.plan
        if plan.is_ip_literal:
            self.marks = replace(self.marks, namelookup=self.marks.start)
            return [(socket.AF_INET6 if ":" in plan.host else socket.AF_INET, (plan.host, plan.port))]
        try:
            infos = socket.getaddrinfo(plan.host, plan.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except socket.gaierror as error:
            raise MeasurementError("resolve", f"{plan.host}: {error.strerror}") from None
        except UnicodeError as error:  # not encodable as IDNA: no resolver could find it
            raise MeasurementError("resolve", f"{plan.host}: {error}") from None
        self.marks = replace(self.marks, namelookup=time.perf_counter_ns())
        return [(info[0], (str(info[4][0]), int(info[4][1]))) for info in infos]

    def _connect(self, addresses: list[tuple[socket.AddressFamily, tuple[str, int]]]) -> socket.socket:
        self.phase = "connect"
        last_error: OSError | None = None
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the request goes out at once
                sock.settimeout(self._remaining())
                sock.connect(address)
            except TimeoutError:
                sock.close()
                raise
            except OSError as error:
                sock.close()
                last_error = error
                continue
            self.marks = replace(self.marks, connect=time.perf_counter_ns())
            self.info["address"] = address[0]
            return sock
        assert last_error is not None  # getaddrinfo never returns an empty list
        raise _connect_error(last_error, f"{self.plan.host} port {self.plan.port}")

    def _handshake(self, sock: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
        self.phase = "tls"
        try:
            sock.settimeout(self._remaining())
            # SNI is the URL's host; Python sends none for an IP literal (RFC 6066 §3) and then checks
            # the certificate's IP addresses instead. Ragged EOFs read as EOF, so that a close-delimited
            # body ends at the close, as over plain TCP.
            secure = context.wrap_socket(sock, server_hostname=self.plan.host, suppress_ragged_eofs=True)
        except ssl.SSLCertVerificationError as error:
            raise MeasurementError("tls_error", f"certificate: {error.verify_message}") from None
        except (ssl.SSLError, ConnectionError) as error:
            raise MeasurementError("tls_error", f"handshake: {error}") from None
        self.marks = replace(self.marks, appconnect=time.perf_counter_ns())
        if version := secure.version():
            self.info["tls_version"] = version
        return secure

    def _exchange(self, sock: socket.socket) -> None:
        self.phase = "ttfb"
        self.marks = replace(self.marks, pretransfer=time.perf_counter_ns())
        try:
            sock.settimeout(self._remaining())
            sock.sendall(self._wire)
            done = False
            while not done:
                sock.settimeout(self._remaining())
                data = sock.recv(_HEAD_RECEIVE_BYTES if self.parser.response is None else _RECEIVE_BYTES)
                now = time.perf_counter_ns()
                if data and self.first_byte_ns is None:
                    self.first_byte_ns = now
                done = self.parser.feed(data)
                if done:
                    self.last_byte_ns = now
                elif not data:  # h11 raises on an EOF inside a response; never spin on a closed socket
                    raise MeasurementError("protocol", "connection closed before the response ended")
                elif (left := self.parser.content_left()) is not None:
                    self._count_body(sock, left)
                    done = True
        except (TimeoutError, MeasurementError):
            raise
        except OSError as error:
            raise MeasurementError("error", f"connection closed before the response ended: {error}") from None

    def _count_body(self, sock: socket.socket, left: int) -> None:
        """Read the last `left` bytes of a Content-Length body, counting them and keeping none (discard.py)."""
        parser = self.parser
        while left > 0:
            sock.settimeout(self._remaining())
            received = discard(sock, left)
            if received == 0:
                raise MeasurementError("protocol", "connection closed before the response ended")
            left -= received
            parser.count_body(received)
        self.last_byte_ns = time.perf_counter_ns()

    def phase_reached(self) -> str:
        """The phase under way: dns, connect, tls, ttfb or body."""
        if self.phase == "ttfb" and self.first_byte_ns is not None:
            return "body"
        return self.phase

    def result_parts(self) -> tuple[dict[str, float], dict[str, str]]:
        """Figures and info of whatever was reached, for success and failure alike."""
        marks, info = self.marks, dict(self.info)
        if marks.pretransfer is not None:
            marks = replace(marks, starttransfer=self.first_byte_ns, total=self.last_byte_ns)
        figures = phase_figures(marks, self.plan.tls)
        response = self.parser.response
        if response is not None:
            figures["status_code"] = float(response.status_code)
            figures["header_bytes"] = float(self.parser.header_bytes)
            figures["bytes"] = float(self.parser.body_bytes)
            info["http_version"] = response.http_version.decode("ascii", "replace")
            headers = response.headers.raw_items()
            info.update(response_info(headers))
            cache_figures, cache_info = cache_facts(
                (name.decode("latin-1"), value.decode("latin-1")) for name, value in headers
            )
            figures.update(cache_figures)
            info.update(cache_info)
        return figures, info


def _run_in_thread(exchange: _Exchange) -> asyncio.Future[None]:
    """Run the exchange in a daemon thread of its own; the future settles when it ends.

    A daemon thread rather than an executor: a test stuck until its deadline must never hold up the
    agent's exit, and no pool limit can queue one test behind others (its start would shift).
    """
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    # After a timeout nobody awaits the future; reading its outcome keeps asyncio from logging it as lost.
    finished.add_done_callback(lambda future: future.cancelled() or future.exception())

    def settle(error: BaseException | None) -> None:
        if finished.done():
            return
        if error is None:
            finished.set_result(None)
        else:
            finished.set_exception(error)

    def body() -> None:
        error: BaseException | None = None
        try:
            exchange.run()
        except BaseException as caught:  # noqa: BLE001 - handed to the waiting task, which judges it
            error = caught
        try:
            loop.call_soon_threadsafe(settle, error)
        except RuntimeError:  # the loop has closed: nobody waits for this result any more
            pass

    threading.Thread(target=body, name="qiancheng-http", daemon=True).start()
    return finished


async def measure(target: Target, settings: HttpSettings) -> Outcome:
    """One request timed by phase: figures in seconds and bytes, and a reason when it failed."""
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
    timeout = float(settings.timeout)
    try:
        # The thread keeps its own deadline on every socket call; this one also covers getaddrinfo,
        # which takes none (the thread then ends on its own and its result is dropped).
        await asyncio.wait_for(asyncio.shield(_run_in_thread(exchange)), timeout + _DEADLINE_SLACK_SECONDS)
    except TimeoutError:
        reason, detail = "timeout", f"{exchange.phase_reached()} not done within {timeout:g} s"
    except MeasurementError as error:
        reason, detail = error.reason, error.detail
    figures, info = exchange.result_parts()
    status = int(figures.get("status_code", 0))
    if reason is None and status not in settings.expected_status:
        expected = ", ".join(str(code) for code in settings.expected_status)
        reason, detail = "http_status", f"status {status}, expected {expected}"
    return Outcome(
        error=reason,
        detail=detail[:1024] or None,
        figures=figures,
        info=info,
    )
