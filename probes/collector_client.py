"""The probe's HTTP/1.1 client to its collector: batches up, plans down, over keep-alive connections.

What the agent needs and no more: a request with a bounded answer body, a deadline for the whole
exchange, TLS with the probe's context (docs/operations.md: the collector's CA, mutual TLS), and an
idle connection kept per collector so that a batch a second costs no handshake. HTTP is framed by h11,
which the HTTP kind already uses; a general client library costs a city box about 12 MB of resident
memory for features the agent never uses (cookies, redirects, proxies, multipart).

Errors are OSError (refused, unreachable, TLS failure, a malformed or cut answer: ConnectionError) or
TimeoutError; an answer, whatever its status, is an `Answer`. A request on a reused connection that
the collector closed meanwhile (its keep-alive timeout) is sent once more on a fresh one: the
collector's batch ids and the plan's GET make that safe.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

__all__ = ["Answer", "CollectorClient"]

_READ_BYTES = 64 * 1024
_IDLE_PER_ORIGIN = 2  # the uploader and the plan client, each with a connection of its own
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Answer:
    """A response: status, headers (names lower-case; a repeated header keeps its last value), body."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return shown if self.port == _DEFAULT_PORTS[self.scheme] else f"{shown}:{self.port}"


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    reused: bool = False

    def close(self) -> None:
        self.writer.close()


class _StaleConnection(ConnectionError):
    """A reused connection ended before any answer: the collector closed it while it was idle."""


class CollectorClient:
    """Requests to collectors over kept-alive connections; `close()` ends them."""

    def __init__(self, context: ssl.SSLContext | None, user_agent: str) -> None:
        """`context`: for https URLs (None: the system's CAs, host name checked)."""
        self._context = context
        self._user_agent = user_agent
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes = b"",
        timeout: float,
        max_body: int,
    ) -> Answer:
        """Send one request and read its answer, whose body is cut at `max_body` bytes; within `timeout` s."""
        origin, target = _split(url)
        request_headers = [("Host", origin.host_header), ("User-Agent", self._user_agent), *headers.items()]
        if body or method in ("POST", "PUT"):
            request_headers.append(("Content-Length", str(len(body))))
        request = h11.Request(method=method, target=target, headers=request_headers)
        async with asyncio.timeout(timeout):
            connection = self._take_idle(origin) or await self._connect(origin)
            try:
                return await self._exchange(origin, connection, request, body, max_body)
            except _StaleConnection:
                return await self._exchange(origin, await self._connect(origin), request, body, max_body)

    async def close(self) -> None:
        """Close every idle connection; later requests fail."""
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        connections = self._idle.get(origin)
        while connections:
            connection = connections.pop()
            if not connection.reader.at_eof() and not connection.writer.is_closing():
                connection.reused = True
                return connection
            connection.close()
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        if self._closed:
            raise ConnectionError("the collector client is closed")
        context = None
        if origin.scheme == "https":
            context = self._context or ssl.create_default_context()
        reader, writer = await asyncio.open_connection(
            origin.host, origin.port, ssl=context, server_hostname=origin.host if context is not None else None
        )
        return _Connection(reader, writer)

    async def _exchange(
        self, origin: _Origin, connection: _Connection, request: h11.Request, body: bytes, max_body: int
    ) -> Answer:
        keep = False
        http = connection.http
        try:
            wire = http.send(request) or b""
            if body:
                wire += http.send(h11.Data(data=body)) or b""
            wire += http.send(h11.EndOfMessage()) or b""
            try:
                connection.writer.write(wire)
                await connection.writer.drain()
            except ConnectionError:
                if connection.reused:
                    raise _StaleConnection from None
                raise
            answer, keep = await self._read_answer(connection, max_body)
            return answer
        except h11.RemoteProtocolError as error:
            raise ConnectionError(f"bad HTTP answer from {origin.host_header}: {error}") from None
        finally:
            if keep and not self._closed:
                http.start_next_cycle()
                idle = self._idle.setdefault(origin, [])
                if len(idle) < _IDLE_PER_ORIGIN:
                    connection.reused = False
                    idle.append(connection)
                else:
                    connection.close()
            else:
                connection.close()

    async def _read_answer(self, connection: _Connection, max_body: int) -> tuple[Answer, bool]:
        """The final answer, and whether the connection can carry another request."""
        http = connection.http
        response: h11.Response | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await connection.reader.read(_READ_BYTES)
                except ConnectionError:
                    if connection.reused and response is None:
                        raise _StaleConnection from None
                    raise
                if not data and response is None:
                    if connection.reused:
                        raise _StaleConnection
                    # e.g. a collector that wants a client certificate ends a TLS 1.3 connection here
                    raise ConnectionError("the collector closed the connection before answering")
                http.receive_data(data)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                if size < max_body:
                    chunks.append(bytes(event.data[: max_body - size]))
                size += len(event.data)
                if size > max_body:  # the rest is not wanted: give up the connection rather than drain it
                    return _answer(response, chunks), False
            elif isinstance(event, h11.EndOfMessage):
                reusable = http.our_state is h11.DONE and http.their_state is h11.DONE
                return _answer(response, chunks), reusable
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the collector closed the connection before its answer ended")
            # h11.InformationalResponse (100 Continue): the final answer follows


def _answer(response: h11.Response | None, chunks: list[bytes]) -> Answer:
    assert response is not None  # h11 yields Data and EndOfMessage only after the Response
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in response.headers}
    return Answer(response.status_code, headers, b"".join(chunks))


def _split(url: str) -> tuple[_Origin, str]:
    """The origin and request target of an http(s) URL; ValueError if it is not one."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Origin(scheme, parts.hostname, parts.port or _DEFAULT_PORTS[scheme]), target
