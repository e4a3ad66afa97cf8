"""TCP echo service: every byte received is sent back; connections are capped and close when idle."""

from __future__ import annotations

import asyncio
import logging
import socket

from qiancheng.core.clock import monotonic
from qiancheng.core.logs import kv

__all__ = ["EchoService", "EchoProtocol"]

log = logging.getLogger("qiancheng.responder.echo")


class EchoService:
    """Bookkeeping shared by the connections of one echo server: the cap and the open connections."""

    def __init__(self, max_connections: int, idle_timeout: float) -> None:
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections: set[EchoProtocol] = set()
        self.refused = 0

    def protocol(self) -> EchoProtocol:
        """A protocol for one new connection (the factory given to `loop.create_server`)."""
        return EchoProtocol(self)

    def close_all(self) -> None:
        """Drop every open connection (at shutdown)."""
        for connection in list(self.connections):
            connection.close()


class EchoProtocol(asyncio.Protocol):
    """One echo connection: writes back what it reads, reads no faster than the peer takes it back."""

    def __init__(self, service: EchoService) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.last_activity = monotonic()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        service = self.service
        if len(service.connections) >= service.max_connections:
            # Over the cap: close at once (the peer sees EOF before any echo) rather than queue.
            service.refused += 1
            log.debug(kv("echo_refused", peer=transport.get_extra_info("peername"), open=len(service.connections)))
            transport.abort()
            return
        service.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Echoes are small and latency is what probes measure: no Nagle delay on the reply.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm(service.idle_timeout)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        # Record activity instead of re-arming a timer per read: the timer checks this when it fires.
        self.last_activity = monotonic()
        self.transport.write(data)

    def eof_received(self) -> bool | None:
        return None  # close our side too once what was written has gone

    def pause_writing(self) -> None:
        # The peer is not reading its echoes: stop reading until it does, so our buffer stays bounded.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.service.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        """Close this connection now."""
        if self.transport is not None:
            self.transport.abort()

    def _arm(self, delay: float) -> None:
        self.timer = asyncio.get_running_loop().call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        idle = monotonic() - self.last_activity
        if idle >= self.service.idle_timeout:
            log.debug(kv("echo_idle_closed", idle_seconds=idle))
            self.timer = None
            if self.transport is not None:
                # FIN when everything was echoed; RST when echoes sit unread (close would wait forever)
                if self.transport.get_write_buffer_size():
                    self.transport.abort()
                else:
                    self.transport.close()
        else:
            self._arm(self.service.idle_timeout - idle)
