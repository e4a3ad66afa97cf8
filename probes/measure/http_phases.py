"""Pure helpers of the HTTP measurement: URL → request plan, phase marks → figures, headers → info.

No I/O here, so that the arithmetic behind every figure is unit-tested with known inputs.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "CDN_HEADERS",
    "Marks",
    "RequestPlan",
    "header_block_end",
    "parse_url",
    "phase_figures",
    "request_headers",
    "response_info",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_INFO_TEXT_MAX = 255

#: Response headers recorded as info (lowercase, `-` → `_`): the server and the facts CDNs give about caching.
CDN_HEADERS = ("server", "x-cache", "cf-cache-status", "age", "via")

# Where a header block ends: h11 accepts a blank line as "\n\r?\n", so we count the same way.
_BLANK_LINE = re.compile(rb"\n\r?\n")


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """What to connect to and what to ask: host (no brackets), port, TLS or not, request target, Host."""

    scheme: str
    host: str
    port: int
    target: str
    host_header: str

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def is_ip_literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def parse_url(url: str) -> RequestPlan:
    """The request plan of an http:// or https:// URL; ValueError says what is wrong."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"url must start with http:// or https://, got {url!r}")
    host = parts.hostname  # lowercased, brackets of an IPv6 literal removed
    if not host:
        raise ValueError(f"no host in url {url!r}")
    port = parts.port or _DEFAULT_PORTS[scheme]  # .port raises ValueError for a bad port
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"
    return RequestPlan(scheme, host, port, target, host_header)


def request_headers(plan: RequestPlan, user_agent: str, extra: Mapping[str, str]) -> list[tuple[str, str]]:
    """Request headers: Host, User-Agent, Accept, Connection: close, then `extra` (which replaces by name)."""
    headers = {
        "host": ("Host", plan.host_header),
        "user-agent": ("User-Agent", user_agent),
        "accept": ("Accept", "*/*"),
        "connection": ("Connection", "close"),
    }
    for name, value in extra.items():
        headers[name.lower()] = (name, value)
    return list(headers.values())


def header_block_end(received: bytes | bytearray, blocks: int) -> int | None:
    """Offset just past the `blocks`-th header block (1xx heads first) in `received`, or None if not in it."""
    position = 0
    for _ in range(blocks):
        match = _BLANK_LINE.search(received, position)
        if match is None:
            return None
        position = match.end()
    return position


@dataclass(frozen=True, slots=True)
class Marks:
    """Phase boundaries in perf_counter ns; None for a phase not (yet) reached or not applicable."""

    start: int
    namelookup: int | None = None
    connect: int | None = None
    appconnect: int | None = None  # TLS handshake done; None for plain http
    pretransfer: int | None = None
    starttransfer: int | None = None
    total: int | None = None


def phase_figures(marks: Marks, tls: bool) -> dict[str, float]:
    """Phase durations and curl-style cumulative marks, in seconds, for every phase that was reached."""

    def since_start(mark: int) -> float:
        return max(0, mark - marks.start) / 1e9

    def between(end: int, begin: int) -> float:
        return max(0, end - begin) / 1e9

    figures: dict[str, float] = {}
    if marks.namelookup is None:
        return figures
    figures["dns_seconds"] = figures["time_namelookup_seconds"] = since_start(marks.namelookup)
    if marks.connect is None:
        return figures
    figures["connect_seconds"] = between(marks.connect, marks.namelookup)
    figures["time_connect_seconds"] = since_start(marks.connect)
    if tls:
        if marks.appconnect is None:
            return figures
        figures["tls_seconds"] = between(marks.appconnect, marks.connect)
        figures["time_appconnect_seconds"] = since_start(marks.appconnect)
    else:
        figures["tls_seconds"] = 0.0
        figures["time_appconnect_seconds"] = 0.0  # curl reports 0 when there is no TLS
    if marks.pretransfer is None:
        return figures
    figures["time_pretransfer_seconds"] = since_start(marks.pretransfer)
    if marks.starttransfer is None:
        return figures
    figures["ttfb_seconds"] = between(marks.starttransfer, marks.pretransfer)
    figures["time_starttransfer_seconds"] = since_start(marks.starttransfer)
    if marks.total is None:
        return figures
    figures["total_seconds"] = figures["time_total_seconds"] = since_start(marks.total)
    return figures


def response_info(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Info facts from response headers (CDN_HEADERS), repeated headers joined with `, `, truncated."""
    values: dict[str, list[str]] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("ascii", "replace").lower()
        if name in CDN_HEADERS:
            values.setdefault(name.replace("-", "_"), []).append(raw_value.decode("latin-1"))
    return {key: ", ".join(found)[:_INFO_TEXT_MAX] for key, found in values.items()}
