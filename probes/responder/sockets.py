"""Listening sockets made the same way for every service, so that addresses behave alike."""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["bind", "describe"]


def bind(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    """A bound, non-blocking socket on host:port (TCP sockets also listen); raises OSError."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            # IPv6-only, as asyncio and nginx do: `::` would otherwise also take the IPv4 port
            # (net.ipv6.bindv6only=0) and a listen list of ["0.0.0.0", "::"] could not bind both.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            # restart at once while old connections sit in TIME_WAIT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def describe(host: str, port: int) -> str:
    """`127.0.0.1:9311` or `[::1]:9311`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
