"""HTTP service: download and upload of any size in bounded memory, ping, health; errors are JSON.

Routes (sizes in bytes, durations in seconds):
- `GET /download?bytes=N`: N bytes of incompressible data, with Content-Length, never cached; sent
  with sendfile(2) from an in-memory file of random bytes, so the kernel copies them straight into
  the socket, by a thread of its own on a duplicate of the socket (the system call releases the GIL,
  so several downloads use several cores, and the event loop stays free).
- `POST /upload`: reads and discards the body; answers `{"bytes": n, "duration_seconds": d}` where d
  runs from the first body byte's arrival to the last one's (0 for a body that arrives in one read).
  A body of known length of at least DIRECT_READ_MIN_BYTES is read straight from the socket by a
  thread (blocking recv_into releases the GIL, so the copy runs beside the event loop and costs one
  Python call per MiB instead of aiohttp's parser and stream per piece); its connection then closes.
- `GET /ping`: `pong`, for HTTP timing tests.
- `GET /healthz`: `{"status": "ok", ...}` with the transfers in flight.

Downloads and uploads share `max_concurrent_transfers` slots; past it a request gets 503 with
Retry-After rather than queueing, so a measurement never silently waits behind others. One client
address may hold `max_transfers_per_client` of them (503 beyond) and move
`max_client_bytes_per_minute`: a token bucket charged with the bytes each transfer really moved when it
ends (a probe asks for more than it reads and closes at the end of its window); a client whose bucket
is in debt gets 429 with Retry-After until it is paid back, so nobody can use a responder as a free
bandwidth source.

With a shared secret (`secret_file`, core/responder_secret.py), downloads and uploads want
`Authorization: Bearer <credential>`; without it, or with a wrong one, they get 401 (before any other
check, so a stranger learns nothing of the limits or the load). /ping and /healthz stay open.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from aiohttp import web

from qiancheng.core.clock import monotonic
from qiancheng.core.logs import kv
from qiancheng.core.responder_secret import SecretFile, authorization_header
from qiancheng.core.token_bucket import TokenBucket

from .config import ResponderLimits

__all__ = ["TransferSlots", "make_app", "CHUNK_BYTES", "RETRY_AFTER_SECONDS"]

log = logging.getLogger("qiancheng.responder.http")

# The in-memory file downloads are sent from, again and again: random, so that no compression on the
# path inflates the throughput, and a few MiB so that no compressor's window spans a repetition.
CHUNK_BYTES = 8 * 1024 * 1024

RETRY_AFTER_SECONDS = 1
# aiohttp reads request bodies in pieces of this size at most (its default is 256 KiB); bigger
# pieces mean fewer wake-ups per uploaded GiB. Flow control still bounds what is buffered.
READ_BUFFER_BYTES = 1024 * 1024

DIRECT_READ_MIN_BYTES = 1024 * 1024
_DIRECT_READ_BUFFER_BYTES = 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


class TransferSlots:
    """Downloads and uploads in flight, in all and per client address, refusing past the limits instead
    of queueing; and each client's byte budget."""

    #: clients remembered at most before the idle ones (no transfer, budget full again) are forgotten
    MAX_CLIENTS = 4096

    def __init__(self, limit: int, per_client: int = 0, client_bytes_per_minute: int = 0) -> None:
        self.limit = limit
        self.per_client = per_client or limit
        self.active = 0
        self._bytes_per_minute = float(client_bytes_per_minute)
        self._clients: dict[str, tuple[int, TokenBucket]] = {}

    def refusal(self, client: str) -> str | None:
        """Why one more transfer from `client` cannot start now, or None."""
        if self.active >= self.limit:
            return f"busy: {self.limit} transfers already in flight (max_concurrent_transfers)"
        if self._clients.get(client, (0, None))[0] >= self.per_client:
            return f"busy: {self.per_client} transfers from {client} already (max_transfers_per_client)"
        return None

    def acquire(self, client: str = "") -> bool:
        """Take a slot if one is free for `client`; True on success (release it with `release`)."""
        if self.refusal(client) is not None:
            return False
        self.active += 1
        count, bucket = self._client(client)
        self._clients[client] = (count + 1, bucket)
        return True

    def release(self, client: str = "") -> None:
        """Give a slot back."""
        self.active -= 1
        count, bucket = self._clients[client]
        self._clients[client] = (count - 1, bucket)

    def budget_wait(self, client: str) -> float:
        """Seconds until `client`'s byte budget is out of debt (0: it may start a transfer)."""
        if not self._bytes_per_minute:
            return 0.0
        count, bucket = self._client(client)
        self._clients[client] = (count, bucket)
        return bucket.wait(0, monotonic())

    def charge(self, client: str, size: int) -> None:
        """Charge the bytes a transfer moved; the budget may go into debt."""
        if self._bytes_per_minute and client in self._clients:
            self._clients[client][1].take(size, monotonic())

    def _client(self, client: str) -> tuple[int, TokenBucket]:
        known = self._clients.get(client)
        if known is not None:
            return known
        if len(self._clients) >= self.MAX_CLIENTS:
            self._forget_idle()
        budget = max(self._bytes_per_minute, 1.0)
        return 0, TokenBucket.full(budget / 60.0, budget, monotonic())

    def _forget_idle(self) -> None:
        now = monotonic()
        for client, (count, bucket) in list(self._clients.items()):
            if not count and bucket.wait(bucket.burst, now) == 0:
                del self._clients[client]


@dataclass(frozen=True, slots=True)
class _State:
    """What the handlers share: limits, the slots, and the in-memory file downloads are sent from."""

    limits: ResponderLimits
    slots: TransferSlots
    source: BinaryIO
    source_bytes: int
    source_filled: Future[None]
    threads: ThreadPoolExecutor  # one thread per transfer slot, for the bodies of downloads and uploads
    # the threads' sockets, shut down when the app stops so no thread outlives it in a blocked call
    thread_sockets: set[socket.socket]
    secret: SecretFile | None
    refused: dict[str, int]  # refusals by reason, for /healthz and the stop log


def _unauthorized(request: web.Request, state: _State) -> web.Response | None:
    """401 unless the request carries the credential of the shared secret (or there is none)."""
    if state.secret is None:
        return None
    given = request.headers.get("Authorization", "").encode("utf-8", "replace")
    if hmac.compare_digest(given, authorization_header(state.secret.secret).encode()):
        return None
    state.refused["unauthorized"] = state.refused.get("unauthorized", 0) + 1
    log.debug(kv("transfer_unauthorized", peer=_client(request), path=request.path))
    return _error(401, "this responder wants its shared secret: Authorization: Bearer <credential> "
                  "(see docs/security.md)", headers={"WWW-Authenticate": 'Bearer realm="qiancheng-responder"'})


_STATE = web.AppKey("responder_state", _State)


def _error(status: int, message: str, field: str = "", headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error body `{"error": ..., "field": ...}` with `status`."""
    body: dict[str, object] = {"error": message}
    if field:
        body["field"] = field
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store", **(headers or {})})


def _busy(reason: str) -> web.Response:
    return _error(503, reason, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def _over_budget(client: str, wait: float) -> web.Response:
    return _error(429, f"{client} moved more than max_client_bytes_per_minute; retry later",
                  headers={"Retry-After": str(max(1, math.ceil(wait)))})  # fmt: skip


def _client(request: web.Request) -> str:
    return request.remote or ""


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, ...) as JSON too, so clients parse one error shape."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        allow = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        return _error(error.status, error.reason, headers=allow)


def _download_size(request: web.Request, limits: ResponderLimits) -> int | web.Response:
    """The `bytes` query parameter, or the 4xx response explaining why it cannot be used."""
    text = request.query.get("bytes")
    if text is None:
        return _error(400, "give the number of bytes to send: /download?bytes=N", field="bytes")
    if not (text.isascii() and text.isdigit()):
        return _error(400, f"bytes must be a whole number ≥ 0, got {text[:40]!r}", field="bytes")
    # Past 19 digits the number is over any cap; checking first also keeps int() off a huge string.
    size = int(text) if len(text) <= 19 else limits.max_download_bytes + 1
    if size > limits.max_download_bytes:
        return _error(
            400, f"bytes must be at most {int(limits.max_download_bytes)} (max_download_bytes)", field="bytes"
        )
    return size


async def _download(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    if (refusal := _unauthorized(request, state)) is not None:
        return refusal
    size = _download_size(request, state.limits)
    if isinstance(size, web.Response):
        return size
    client = _client(request)
    if (busy := state.slots.refusal(client)) is not None:
        return _busy(busy)
    if wait := state.slots.budget_wait(client):
        return _over_budget(client, wait)
    state.slots.acquire(client)
    moved = [0]
    try:
        return await _send(request, state, size, moved)
    finally:
        state.slots.release(client)
        state.slots.charge(client, moved[0])


async def _send(request: web.Request, state: _State, size: int, moved: list[int]) -> web.StreamResponse:
    """Send `size` bytes from the shared in-memory file (`moved[0]` counts them as they go); a stalled or
    lost peer ends it quietly."""
    started = monotonic()
    stall = float(state.limits.transfer_stall_timeout)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-store"})
    response.content_length = size
    if not state.source_filled.done():
        await asyncio.wrap_future(state.source_filled)
    try:
        async with asyncio.timeout(stall):
            await response.prepare(request)
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("connection lost")
            # the head must be on the wire before the thread writes the body beside aiohttp
            while transport.get_write_buffer_size():
                await asyncio.sleep(0.001)
        socket_ = transport.get_extra_info("socket")
        if socket_ is None or transport.get_extra_info("sslcontext") is not None:
            raise ConnectionResetError("not a plain TCP connection")  # the responder serves plain HTTP only
        await _in_thread(state, socket_.fileno(), stall, _send_body, state.source, state.source_bytes, size, moved)
        await response.write_eof()
        log.debug(kv("download_done", peer=request.remote, bytes=size, seconds=monotonic() - started))
    except TimeoutError:
        log.info(kv("download_stalled", peer=request.remote, of=size, stall_seconds=stall))
        _drop_connection(request)
    except ConnectionError as error:
        log.debug(kv("download_aborted", peer=request.remote, of=size, error=str(error)))
    # Also when the connection is gone: aiohttp's finish step meets the closed transport and lets it
    # be, where a raised exception would be logged as a server error and answered with a 500.
    return response


async def _in_thread(state: _State, fd: int, stall: float, body: Callable[..., T], *args: Any) -> T:
    """`body(raw, *args)` in a transfer thread, `raw` a duplicate of the connection's socket `fd`.

    The duplicate is registered (the app's cleanup shuts it down) and closed when the thread is done.
    A cancelled caller shuts it down, so the thread's blocked call returns at once instead of keeping
    the process alive until the stall timeout.
    """
    raw = socket.socket(fileno=os.dup(fd))
    raw.settimeout(stall)  # timeout mode keeps the shared file description non-blocking, as asyncio needs
    state.thread_sockets.add(raw)

    def release(_: object) -> None:
        state.thread_sockets.discard(raw)
        raw.close()

    done = state.threads.submit(body, raw, *args)
    done.add_done_callback(release)
    try:
        return await asyncio.wrap_future(done)
    except asyncio.CancelledError:
        _shutdown(raw)
        raise


def _shutdown(raw: socket.socket) -> None:
    try:
        raw.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed: the thread is done
        pass


def _send_body(raw: socket.socket, source: BinaryIO, source_bytes: int, size: int, moved: list[int]) -> None:
    """Send `size` bytes from `source` over and over with sendfile(2), counting them in `moved[0]`."""
    sent = 0
    while sent < size:
        offset = sent % source_bytes
        count = raw.sendfile(source, offset, min(size - sent, source_bytes - offset))
        if not count:
            raise ConnectionResetError(f"connection closed after {sent} of {size} bytes")
        sent += count
        moved[0] = sent


async def _upload_expect(request: web.Request) -> web.StreamResponse | None:
    """Answer `Expect: 100-continue` with the final refusal when the body would be refused anyway."""
    state = request.app[_STATE]
    refusal = _upload_refusal(request, state)
    if refusal is not None:
        refusal.force_close()
        return refusal
    if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own expect handler: the body has not started
        return None
    return _error(417, f"unknown Expect: {request.headers.get('Expect', '')[:40]!r}")


def _upload_refusal(request: web.Request, state: _State) -> web.Response | None:
    """413 for a declared length over the cap, 503 when the slots are taken, 429 while the client's byte
    budget is in debt (401 before all, without the shared secret's credential), else None."""
    if (refusal := _unauthorized(request, state)) is not None:
        return refusal
    length, cap = request.content_length, int(state.limits.max_upload_bytes)
    if length is not None and length > cap:
        return _error(413, f"body of {length} bytes is over max_upload_bytes ({cap})", field="body")
    client = _client(request)
    if (busy := state.slots.refusal(client)) is not None:
        return _busy(busy)
    if wait := state.slots.budget_wait(client):
        return _over_budget(client, wait)
    return None


async def _upload(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    # an Expect: 100-continue request was checked (and its declared length charged) by _upload_expect
    refusal = None if request.headers.get("Expect") else _upload_refusal(request, state)
    if refusal is not None:
        refusal.force_close()  # the unread body must not be taken for the next request
        return refusal
    client = _client(request)
    if not state.slots.acquire(client):  # taken between the Expect answer and the body
        return _busy(state.slots.refusal(client) or "busy")
    moved = [0]
    try:
        length = request.content_length
        transport = request.transport
        # plain TCP only: on TLS the socket carries records, not the body
        socket_ = transport.get_extra_info("socket") if transport is not None and transport.get_extra_info("sslcontext") is None else None
        if length is not None and length >= DIRECT_READ_MIN_BYTES and socket_ is not None and "Transfer-Encoding" not in request.headers:
            return await _upload_direct(request, state, length, socket_.fileno(), moved)
        return await _upload_streamed(request, state, moved)
    finally:
        state.slots.release(client)
        state.slots.charge(client, moved[0])


async def _upload_direct(request: web.Request, state: _State, length: int, fd: int, moved: list[int]) -> web.StreamResponse:
    """Read the rest of a body of `length` bytes in a reader thread, on a duplicate of the socket."""
    transport = request.transport
    assert transport is not None
    stall = float(state.limits.transfer_stall_timeout)
    started = monotonic()
    # what aiohttp has read already, then no more: from here on only the thread reads this socket (no
    # await in between, so no data_received can run; the connection closes after the response)
    early = 0
    while piece := request.content.read_nowait():
        early += len(piece)
    transport.pause_reading()
    while piece := request.content.read_nowait():
        early += len(piece)
    try:
        received, first, last = await _in_thread(state, fd, stall, _read_exactly, length - early, moved)
    except TimeoutError:
        log.info(kv("upload_stalled", peer=request.remote, bytes=early, stall_seconds=stall))
        _drop_connection(request)
        return _error(408, "upload stalled (transfer_stall_timeout)")
    except ConnectionError as error:
        log.debug(kv("upload_aborted", peer=request.remote, error=str(error)))
        return _error(400, "connection lost mid-body")
    first = started if early else first
    response = web.json_response(
        {"bytes": early + received, "duration_seconds": max(0.0, last - first)}, headers={"Cache-Control": "no-store"}
    )
    response.force_close()
    log.debug(kv("upload_done", peer=request.remote, bytes=early + received, seconds=last - first, direct=True))
    return response


def _read_exactly(raw: socket.socket, count: int, moved: list[int]) -> tuple[int, float, float]:
    """Read and discard `count` bytes from `raw`: (bytes, first and last arrival); `moved[0]` counts them."""
    buffer = memoryview(bytearray(_DIRECT_READ_BUFFER_BYTES))
    received, first, last = 0, 0.0, 0.0
    while received < count:
        got = raw.recv_into(buffer, min(len(buffer), count - received))
        if not got:
            raise ConnectionResetError(f"connection closed after {received} of {count} bytes")
        last = monotonic()
        if not received:
            first = last
        received += got
        moved[0] = received
    return received, first, last


async def _upload_streamed(request: web.Request, state: _State, moved: list[int]) -> web.StreamResponse:
    """Read the body through aiohttp, piece by piece (chunked bodies, small bodies)."""
    cap, stall = int(state.limits.max_upload_bytes), float(state.limits.transfer_stall_timeout)
    loop = asyncio.get_running_loop()
    received, first, last = 0, 0.0, 0.0
    try:
        async with asyncio.timeout(stall) as deadline:
            while chunk := await request.content.readany():
                last = monotonic()
                if not received:
                    first = last
                received += len(chunk)
                moved[0] = received
                if received > cap:
                    response = _error(413, f"body is over max_upload_bytes ({cap})", field="body")
                    response.force_close()
                    return response
                deadline.reschedule(loop.time() + stall)
    except TimeoutError:
        log.info(kv("upload_stalled", peer=request.remote, bytes=received, stall_seconds=stall))
        _drop_connection(request)
        return _error(408, "upload stalled (transfer_stall_timeout)")  # for the log: nobody reads it
    except ConnectionError:
        log.debug(kv("upload_aborted", peer=request.remote, bytes=received))
        return _error(400, "connection lost mid-body")
    duration = last - first
    log.debug(kv("upload_done", peer=request.remote, bytes=received, seconds=duration))
    return web.json_response(
        {"bytes": received, "duration_seconds": duration}, headers={"Cache-Control": "no-store"}
    )


def _drop_connection(request: web.Request) -> None:
    """Close a connection whose transfer stalled: its state mid-body is of no use to anyone."""
    if request.transport is not None:
        request.transport.abort()


async def _ping(request: web.Request) -> web.StreamResponse:
    return web.Response(text="pong", headers={"Cache-Control": "no-store"})


async def _healthz(request: web.Request) -> web.StreamResponse:
    slots = request.app[_STATE].slots
    return web.json_response(
        {"status": "ok", "transfers": slots.active, "max_concurrent_transfers": slots.limit,
         "refused": request.app[_STATE].refused},
        headers={"Cache-Control": "no-store"},
    )


def _fill(source: BinaryIO, chunk: bytes) -> None:
    source.write(chunk or os.urandom(CHUNK_BYTES))


def make_app(limits: ResponderLimits, chunk: bytes | None = None, secret: SecretFile | None = None) -> web.Application:
    """The HTTP service as an aiohttp application; `chunk` (default: 8 MiB random) feeds downloads;
    with a `secret`, transfers want its credential."""
    app = web.Application(middlewares=[_json_errors])
    source = os.fdopen(os.memfd_create("qiancheng-download", os.MFD_CLOEXEC), "w+b", buffering=0)
    threads = ThreadPoolExecutor(limits.max_concurrent_transfers, thread_name_prefix="transfer")
    # 8 MiB of random bytes take tens of ms: made in a thread, off the start-up path; downloads wait for it
    filled = threads.submit(_fill, source, chunk or b"")
    size = len(chunk) if chunk else CHUNK_BYTES
    slots = TransferSlots(limits.max_concurrent_transfers, limits.max_transfers_per_client,
                          int(limits.max_client_bytes_per_minute))  # fmt: skip
    app[_STATE] = _State(limits, slots, source, size, filled, threads, set(), secret, {})

    async def close_source(app: web.Application) -> None:
        # after the shutdown grace: transfers still under way end now, their threads return at once
        for raw in list(app[_STATE].thread_sockets):
            _shutdown(raw)
        threads.shutdown(wait=False)
        source.close()

    app.on_cleanup.append(close_source)
    app.router.add_get("/download", _download, allow_head=False)
    app.router.add_post("/upload", _upload, expect_handler=_upload_expect)
    app.router.add_get("/ping", _ping)
    app.router.add_get("/healthz", _healthz)
    return app
