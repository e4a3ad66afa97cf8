"""The TCP streams of a throughput test: one thread each, moving bytes with blocking system calls.

A stream is a thread, not a coroutine: a blocking `recv` that counts the bytes without copying them out
(download, discard.py) or `os.sendfile` from an in-memory file (upload) releases the GIL for the whole
system call, so N streams run in parallel with one Python call per read or 256 KiB sent or more, and
the event loop stays free for the sampler and the latency probes. The threads only count; the sampler
in throughput.py reads the counts.

HTTP is spoken by hand, and only as much as a bulk transfer needs: downloads send HTTP/1.0 GETs (so
the body ends at Content-Length or at close, never chunked), uploads an HTTP/1.1 POST with
`Expect: 100-continue` (a responder with no free slot answers 503 before any body is sent).
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from qiancheng.core import __version__
from qiancheng.core.addresses import UNREACHABLE_ERRNOS

from .discard import CHUNK_BYTES, discard
from .tcp_info import TcpInfo, tcp_info

__all__ = ["Endpoint", "StreamError", "Stream", "DownloadStream", "UploadStream", "parse_head"]

_HEAD_LIMIT = 64 * 1024
_UPLOAD_SOURCE_BYTES = 4 * 1024 * 1024
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
_USER_AGENT = f"qiancheng/{__version__}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the streams go: the URL's parts and the one address every stream connects to."""

    scheme: str
    host: str  # as written in the URL: the Host header and the TLS server name
    port: int
    path: str  # path and query
    family: socket.AddressFamily
    address: str
    verify_tls: bool
    authorization: str | None = None  # the Authorization header's value (a responder's shared secret)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def extra_headers(self) -> str:
        """Header lines every request carries beyond the usual ones (each ending in CRLF)."""
        return f"Authorization: {self.authorization}\r\n" if self.authorization else ""


class StreamError(Exception):
    """Why a stream failed: `reason` is one of the result reasons, `detail` says what happened."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_head(data: bytes) -> tuple[int, list[tuple[str, str]], int | None]:
    """Status, headers (names lower case) and Content-Length of a response head (without the blank line)."""
    lines = data.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise StreamError("protocol", f"not an HTTP status line: {lines[0][:80]!r}")
    headers = []
    length: int | None = None
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise StreamError("protocol", f"malformed header line: {line[:80]!r}")
        name, value = name.strip().lower(), value.strip()
        headers.append((name, value))
        if name == "content-length":
            if not value.isdigit():
                raise StreamError("protocol", f"bad Content-Length: {value[:40]!r}")
            length = int(value)
    return int(parts[1]), headers, length


def _upload_source() -> tuple[int, int]:
    """(fd, size) of an in-memory file of random bytes that uploads send from with sendfile."""
    global _source
    if _source is None:
        fd = os.memfd_create("qiancheng-upload", os.MFD_CLOEXEC)
        os.write(fd, os.urandom(_UPLOAD_SOURCE_BYTES))  # random: no compression on the path inflates it
        _source = fd
    return _source, _UPLOAD_SOURCE_BYTES


_source: int | None = None
_source_lock = threading.Lock()


def _reason(error: BaseException) -> str:
    # a TLS read or write that hit the kernel's SO_RCVTIMEO/SO_SNDTIMEO is a stall, not a TLS failure
    if isinstance(error, (TimeoutError, BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)):
        return "timeout"
    if isinstance(error, ssl.SSLError):
        return "tls_error"
    if isinstance(error, (TimeoutError, BlockingIOError)):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, OSError) and error.errno in UNREACHABLE_ERRNOS:
        return "unreachable"
    return "error"


class Stream:
    """One stream's thread, its counters and its socket; `stop()` ends it from any thread."""

    def __init__(self, index: int, endpoint: Endpoint, budget_bytes: int, timeout: float,
                 on_change: Callable[[], None], request_bytes: int) -> None:
        self.index = index
        self.request_bytes = request_bytes  # the most one upload request carries
        self.endpoint = endpoint
        self.budget_bytes = budget_bytes
        self.timeout = timeout
        self.bytes = 0  # body bytes this end has read (download) or handed to the kernel (upload)
        self.ready = False  # the response head (download) or 100 Continue (upload) has arrived
        self.finished = False  # the thread has ended, its budget moved or failed
        self.error: StreamError | None = None
        self.headers: list[tuple[str, str]] = []  # of the first response
        self._on_change = on_change
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"throughput-stream-{index}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the transfer now: a blocked recv or sendfile returns at once (the socket is shut down)."""
        with self._lock:
            self._stopped = True
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        self._close()

    def info(self) -> TcpInfo | None:
        """TCP_INFO of the current connection, None between connections or after the end."""
        with self._lock:
            return tcp_info(self._sock) if self._sock is not None and not self._stopped else None

    def _run(self) -> None:
        try:
            self._transfer()
        except StreamError as error:
            self._fail(error)
        except (OSError, ssl.SSLError) as error:
            stalled = isinstance(error, (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError))
            what = f"stalled: no progress for {self.timeout:g} s" if stalled else str(error) or type(error).__name__
            self._fail(StreamError(_reason(error), f"stream {self.index}: {what}"))
        finally:
            self.finished = True
            self._on_change()

    def _fail(self, error: StreamError) -> None:
        if not self._stopped:  # after stop() any error is ours, not the path's
            self.error = error

    def _transfer(self) -> None:
        raise NotImplementedError

    def _connect(self) -> socket.socket | None:
        """A connected (and, for https, TLS) socket with kernel stall timeouts; None if stopped meanwhile."""
        endpoint = self.endpoint
        sock = socket.socket(endpoint.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect((endpoint.address, endpoint.port))
            if endpoint.scheme == "https":
                sock = _tls_context(endpoint.verify_tls).wrap_socket(sock, server_hostname=endpoint.host)
            sock.settimeout(None)
            # Blocking calls with kernel timeouts: one system call per recv or sendfile, and a stalled
            # peer still ends in EAGAIN (BlockingIOError) after `timeout`.
            timeval = struct.pack("ll", int(self.timeout), int(self.timeout % 1 * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            # closed with a reset: a test cut at the end of its window leaves no TIME_WAIT behind
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        except BaseException:
            sock.close()
            raise
        with self._lock:
            if self._stopped:
                sock.close()
                return None
            self._sock = sock
        return sock

    def _close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _read_head(self, sock: socket.socket) -> tuple[int, list[tuple[str, str]], int | None, bytes]:
        """The response head, and the body bytes that arrived with it."""
        data = b""
        while (end := data.find(b"\r\n\r\n")) < 0:
            if len(data) > _HEAD_LIMIT:
                raise StreamError("protocol", f"response head longer than {_HEAD_LIMIT} bytes")
            piece = sock.recv(16 * 1024)
            if not piece:
                raise StreamError("protocol", f"stream {self.index}: connection closed before the response head")
            data += piece
        status, headers, length = parse_head(data[:end])
        return status, headers, length, data[end + 4 :]

    def _refused(self, sock: socket.socket, status: int, rest: bytes, length: int | None) -> StreamError:
        """The error for an unexpected status, with the start of the body (the responder's JSON reason)."""
        try:
            while len(rest) < min(length if length is not None else 512, 512):
                piece = sock.recv(512)
                if not piece:
                    break
                rest += piece
        except OSError:
            pass
        body = rest[:512].decode("utf-8", "replace").strip()
        return StreamError("http_status", f"HTTP {status} from {self.endpoint.host_header}{self.endpoint.path}: {body}"[:900])


def _tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


#: bytes a plain-TCP download waits for before a read returns (SO_RCVLOWAT): under 2 ms at 100 Mbit/s
_RECEIVE_LOW_WATER = 16 * 1024


class DownloadStream(Stream):
    """GETs the URL until the stream's byte budget is read or it is stopped (a small object is fetched again)."""

    def _transfer(self) -> None:
        endpoint = self.endpoint
        request = (f"GET {endpoint.path} HTTP/1.0\r\nHost: {endpoint.host_header}\r\nUser-Agent: {_USER_AGENT}\r\n"
                   f"Accept: */*\r\nAccept-Encoding: identity\r\n{endpoint.extra_headers}\r\n").encode()
        while not self._stopped and self.bytes < self.budget_bytes:
            sock = self._connect()
            if sock is None:
                return
            sock.sendall(request)
            status, headers, length, rest = self._read_head(sock)
            if status != 200:
                raise self._refused(sock, status, rest, length)
            if not self.ready:
                self.headers, self.ready = headers, True
                self._on_change()
            if not isinstance(sock, ssl.SSLSocket):
                # wake for 16 KiB at a time, not for each packet: on a shaped line of 100 Mbit/s packets
                # come one by one, and a read per packet was most of the probe's CPU per GB. The kernel
                # asks no more than a read's length, and a read that times out returns what came
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, _RECEIVE_LOW_WATER)
            self.bytes += len(rest)
            remaining = None if length is None else length - len(rest)
            budget = self.budget_bytes
            while remaining is None or remaining > 0:
                count = discard(sock, remaining or CHUNK_BYTES)  # counted, never copied out (discard.py)
                if not count:
                    if remaining:
                        raise StreamError("protocol", f"stream {self.index}: connection closed {remaining} bytes before the end of the body")
                    break
                self.bytes += count
                if remaining is not None:
                    remaining -= count
                if self.bytes >= budget:
                    break
            self._close()
            if length is None and not self.bytes:
                raise StreamError("protocol", f"stream {self.index}: empty body")


class UploadStream(Stream):
    """POSTs bodies adding up to the stream's byte budget, sent with sendfile from an in-memory file."""

    def __init__(self, index: int, endpoint: Endpoint, budget_bytes: int, timeout: float,
                 on_change: Callable[[], None], request_bytes: int) -> None:
        super().__init__(index, endpoint, budget_bytes, timeout, on_change, request_bytes)
        self.head_bytes = 0  # request head bytes, which TCP_INFO's bytes_acked counts too
        self.body_bytes = 0  # of the current request
        self.done_bytes = 0  # bodies of the requests already answered
        self.acked = 0  # body bytes the receiver acknowledged, as of the last `acked_body_bytes()`

    def acked_body_bytes(self) -> int:
        """Body bytes the responder's TCP has acknowledged (kept from the last reading once the socket is gone)."""
        info = self.info()
        if info is not None:
            # SACKed bytes count too: after a loss the cumulative ACK stalls at the hole while the data
            # behind it keeps arriving, then leaps; a window starting in such a moment would count the
            # leap as goodput of its own. bytes_acked counts the SYN as one byte, and the request head.
            acked = min(max(info.delivered_bytes - 1 - self.head_bytes, 0), self.body_bytes)
            self.acked = max(self.acked, self.done_bytes + acked)
        return self.acked

    def _transfer(self) -> None:
        while not self._stopped and self.done_bytes < self.budget_bytes:
            self._request(min(self.budget_bytes - self.done_bytes, self.request_bytes))

    def _request(self, budget: int) -> None:
        with _source_lock:
            source, source_bytes = _upload_source()
        endpoint = self.endpoint
        sock = self._connect()
        if sock is None:
            return
        head = (f"POST {endpoint.path} HTTP/1.1\r\nHost: {endpoint.host_header}\r\nUser-Agent: {_USER_AGENT}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {budget}\r\n"
                f"Expect: 100-continue\r\nConnection: close\r\n{endpoint.extra_headers}\r\n").encode()
        self.head_bytes, self.body_bytes = len(head), budget
        sock.sendall(head)
        status, _, length, rest = self._read_head(sock)
        if status != 100:
            raise self._refused(sock, status, rest, length)
        if not self.ready:
            self.ready = True
            self._on_change()
        offset, sent = 0, 0
        if endpoint.scheme == "https":
            view = memoryview(os.pread(source, source_bytes, 0))
            while sent < budget and not self._stopped:
                count = sock.send(view[offset : offset + min(budget - sent, source_bytes - offset)])
                sent += count
                offset = (offset + count) % source_bytes
                self.bytes = self.done_bytes + sent
        else:
            fd = sock.fileno()
            while sent < budget and not self._stopped:
                count = os.sendfile(fd, source, offset, min(budget - sent, source_bytes - offset))
                if not count:
                    raise StreamError("protocol", f"stream {self.index}: connection closed mid-body")
                sent += count
                offset = (offset + count) % source_bytes
                self.bytes = self.done_bytes + sent
        if self._stopped:
            return
        status, _, length, rest = self._read_head(sock)
        if status != 200:
            raise self._refused(sock, status, rest, length)
        self.acked_body_bytes()
        with self._lock:  # the whole body is in: it counts even when the sampler looks between requests
            self.done_bytes += budget
            self.acked = max(self.acked, self.done_bytes)
            self.body_bytes = 0
        self._close()
