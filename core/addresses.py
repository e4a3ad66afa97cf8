"""Target addresses and socket helpers shared by the measurement kinds.

- `split_host_port`: host and port from the address forms a config may hold;
- `resolve`: one socket address for a host, honouring a family preference (name lookups are not timed);
- kernel receive timestamps (SO_TIMESTAMPNS), so that a busy event loop stays out of the figures.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import platform
import socket
import struct
from typing import Literal
from urllib.parse import urlsplit

from .errors import MeasurementError

__all__ = [
    "SO_TIMESTAMPING",
    "SO_TIMESTAMPNS",
    "UNREACHABLE_ERRNOS",
    "canonical_address",
    "enable_receive_timestamps",
    "enable_send_timestamps",
    "kernel_timestamp_ns",
    "send_timestamp_ns",
    "resolve",
    "split_host_port",
]

# Python does not export SO_TIMESTAMPNS; 35 is its value on every Linux architecture we ship to (x86,
# arm, arm64, riscv, mips, powerpc, s390). Elsewhere we fall back to user-space clock reads.
SO_TIMESTAMPNS: int | None = (
    35 if platform.system() == "Linux" and not platform.machine().startswith(("sparc", "parisc", "alpha")) else None
)

# SO_TIMESTAMPING (37 on the same architectures) with software send timestamps: the kernel reports, on
# the socket's error queue, when each packet was handed to the device (Documentation/networking/timestamping).
SO_TIMESTAMPING: int | None = 37 if SO_TIMESTAMPNS is not None else None
_SOF_TIMESTAMPING_TX_SOFTWARE = 1 << 1
_SOF_TIMESTAMPING_SOFTWARE = 1 << 4
_SOF_TIMESTAMPING_OPT_ID = 1 << 7  # each stamp carries the number of the send it belongs to
_SOF_TIMESTAMPING_OPT_TSONLY = 1 << 11  # the stamp alone, without a copy of the packet

UNREACHABLE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})

Family = Literal["auto", "ipv4", "ipv6"]
_FAMILIES = {"auto": socket.AF_UNSPEC, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


@functools.lru_cache(maxsize=4096)
def canonical_address(text: str) -> str:
    """The canonical text of an IP address (IPv6 zone dropped), to compare addresses as received with
    those sent to; any other text unchanged."""
    try:
        return str(ipaddress.ip_address(text.partition("%")[0]))
    except ValueError:
        return text


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Host and port from `host`, `host:port`, `ip`, `[v6]:port`, bare `v6`, or a URL; ValueError if bad."""
    text = text.strip()
    if "://" in text:
        parts = urlsplit(text)
        if not parts.hostname:
            raise ValueError(f"no host in {text!r}")
        return parts.hostname, parts.port or default_port
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad bracketed address {text!r}")
        return host, _port(rest[1:], text) if rest else default_port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port, text)
    return text, default_port  # a host, an IPv4 literal, or a bare IPv6 literal (several colons)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"bad port in {whole!r}")
    return int(text)


async def resolve(
    host: str, port: int, family: Family = "auto", kind: int = socket.SOCK_STREAM
) -> tuple[socket.AddressFamily, str]:
    """The family and IP address to measure `host` at; MeasurementError `resolve` if there is none."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        found = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        if family != "auto" and found != _FAMILIES[family]:
            raise MeasurementError("resolve", f"{host} is not an {family} address")
        return found, str(ip)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, family=_FAMILIES[family], type=kind)
    except socket.gaierror as error:
        raise MeasurementError("resolve", f"{host}: {error.strerror}") from None
    except UnicodeError as error:  # not encodable as IDNA: no resolver could find it
        raise MeasurementError("resolve", f"{host}: {error}") from None
    if not infos:
        raise MeasurementError("resolve", f"{host}: no address")
    found_family, _, _, _, address = infos[0]
    return socket.AddressFamily(found_family), str(address[0])


def enable_receive_timestamps(sock: socket.socket) -> None:
    """Ask the kernel to stamp every received datagram (read back with `kernel_timestamp_ns`)."""
    if SO_TIMESTAMPNS is not None:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def kernel_timestamp_ns(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """Receive time (UTC ns) from an SCM_TIMESTAMPNS message: 64-bit or, on 32-bit kernels, 32-bit fields."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            if len(data) >= 16:
                seconds, nanoseconds = struct.unpack("=qq", data[:16])
            elif len(data) >= 8:
                seconds, nanoseconds = struct.unpack("=ii", data[:8])
            else:
                return None
            return int(seconds) * 1_000_000_000 + int(nanoseconds)
    return None


def enable_send_timestamps(sock: socket.socket, numbered: bool = False) -> bool:
    """Ask for software send timestamps on the error queue; False where the kernel does not offer them.
    `numbered`: each stamp says which send it belongs to (SOF_TIMESTAMPING_OPT_ID) and comes without a
    copy of the packet (OPT_TSONLY)."""
    if SO_TIMESTAMPING is None:
        return False
    flags = _SOF_TIMESTAMPING_TX_SOFTWARE | _SOF_TIMESTAMPING_SOFTWARE
    if numbered:
        flags |= _SOF_TIMESTAMPING_OPT_ID | _SOF_TIMESTAMPING_OPT_TSONLY
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, flags)
    except OSError:
        return False
    return True


def send_timestamp_ns(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The software timestamp (UTC ns) of an SCM_TIMESTAMPING message: the first of its three timespecs."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("=qq", data[:16])
            return int(seconds) * 1_000_000_000 + int(nanoseconds) or None
    return None
