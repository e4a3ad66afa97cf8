"""DNS service: the test zone over UDP and TCP (RFC 1035 §4.2.2 two-byte length framing).

Answering is pure (dnszone.answer, tens of microseconds per query, measured negligible next to the
socket work), so it runs on the event loop rather than in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import cast

from qiancheng.core.logs import kv

from .dnszone import Zone, answer

__all__ = ["DnsUdpProtocol", "DnsTcpService"]

log = logging.getLogger("qiancheng.responder.dns")
_LENGTH = struct.Struct("!H")


class DnsUdpProtocol(asyncio.DatagramProtocol):
    """One UDP socket of the DNS service: one answer datagram per query datagram (or none for garbage)."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector UDP transport does not subclass DatagramTransport, though it is one.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = answer(data, self.zone, "udp")
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that left, and the like: nothing to do but note it.
        log.debug(kv("dns_udp_error", reason=exc))


class DnsTcpService:
    """DNS over TCP: several queries per connection, answered in order; capped and closed when idle."""

    def __init__(self, zone: Zone, max_connections: int, idle_timeout: float) -> None:
        self.zone = zone
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections: set[asyncio.StreamWriter] = set()
        self.servers: list[asyncio.Server] = []

    async def listen(self, sock: socket.socket) -> None:
        """Serve on a bound, listening TCP socket."""
        self.servers.append(await asyncio.start_server(self._serve, sock=sock))

    def close(self) -> None:
        """Stop accepting and drop open connections."""
        for server in self.servers:
            server.close()
        for writer in list(self.connections):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.connections) >= self.max_connections:
            writer.transport.abort()
            return
        self.connections.add(writer)
        try:
            while True:
                # The whole query, length and body, must come within the idle timeout: a peer that
                # trickles bytes holds a connection no longer than one that sends nothing.
                async with asyncio.timeout(self.idle_timeout):
                    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
                    wire = await reader.readexactly(length)
                reply = answer(wire, self.zone, "tcp")
                if reply is None:
                    break  # garbage without a header: the framing can no longer be trusted
                writer.write(_LENGTH.pack(len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass  # the peer left, or stayed idle too long: both are normal ends of a DNS/TCP connection
        finally:
            self.connections.discard(writer)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # answers the peer never read: do not wait for them
            else:
                writer.close()
