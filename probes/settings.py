"""Per-kind measurement settings: defaults declared once, here; durations in seconds, sizes in bytes.

The config loader turns readable values (`30s`, `500ms`, `64MiB`) into these types; measurement modules
receive them already validated.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

__all__ = [
    "Duration",
    "Size",
    "KindSettings",
    "IcmpSettings",
    "TcpSettings",
    "DnsSettings",
    "HttpSettings",
    "StampSettings",
    "ThroughputSettings",
    "DownloadSettings",
    "UploadSettings",
    "SETTINGS_BY_KIND",
    "throughput_problem",
    "parse_duration",
    "parse_size",
]


class Duration(float):
    """Seconds; written in config as `30s`, `500ms`, `2m`, `1h` or a bare number of seconds."""


class Size(int):
    """Bytes; written in config as `64MiB`, `1GB`, `512KiB` or a bare number of bytes."""


_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^(?P<number>\d+(\.\d*)?|\.\d+)\s*(?P<unit>us|µs|ms|s|m|h|d)?$")
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}  # fmt: skip


def parse_duration(value: object) -> Duration:
    """Seconds from `30s`, `500ms`, `2m`, `1h`, `1d` or a number; ValueError says what is accepted."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value.strip().lower())):
        seconds = float(match["number"]) * _DURATION_UNITS[match["unit"] or "s"]
    else:
        raise ValueError(f"expected a duration such as 30s or 500ms, got {value!r}")
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"a duration must be a finite number of seconds ≥ 0, got {value!r}")
    return Duration(seconds)


def parse_size(value: object) -> Size:
    """Bytes from `64MiB`, `1GB`, `512KiB` or a number; ValueError says what is accepted."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64MiB, got a boolean")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(digits):] or "b"
        if unit not in _SIZE_UNITS or not digits:
            raise ValueError(f"expected a size such as 64MiB or 1GB, got {value!r}")
        try:
            size = int(float(digits) * _SIZE_UNITS[unit])
        except ValueError:
            raise ValueError(f"expected a size such as 64MiB or 1GB, got {value!r}") from None
    else:
        raise ValueError(f"expected a size such as 64MiB, got {type(value).__name__}")
    if size < 0:
        raise ValueError(f"a size must be ≥ 0, got {value!r}")
    return Size(size)


Positive = msgspec.Meta(gt=0)


class KindSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Settings every kind has: how often it runs and how long one wait may last."""

    interval: Duration = Duration(30.0)
    timeout: Duration = Duration(1.0)

    def max_duration(self) -> float:
        """Longest time one test can take, in seconds (the scheduler's interval must exceed it)."""
        return float(self.timeout)


class _Train(KindSettings, frozen=True, kw_only=True):
    """A train of packets (or connects): `count` of them, one every `packet_interval`."""

    count: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 10
    packet_interval: Duration = Duration(0.1)

    def max_duration(self) -> float:
        return (self.count - 1) * float(self.packet_interval) + float(self.timeout)


class IcmpSettings(_Train, frozen=True, kw_only=True):
    """ICMP echo train; `size` is the payload in bytes (56 gives the classic 64-byte ICMP packet)."""

    size: Annotated[int, msgspec.Meta(ge=16, le=65_000)] = 56
    family: Literal["auto", "ipv4", "ipv6"] = "auto"


class TcpSettings(_Train, frozen=True, kw_only=True):
    """TCP connect train to `port` (ignored when the target address carries its own port)."""

    count: Annotated[int, msgspec.Meta(ge=1, le=1_000)] = 5
    packet_interval: Duration = Duration(0.2)
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 443
    family: Literal["auto", "ipv4", "ipv6"] = "auto"


class StampSettings(_Train, frozen=True, kw_only=True):
    """STAMP (RFC 8762) train to a session-reflector at `port` (ignored when the target carries its own).

    `size` is the UDP payload in bytes: the 44-byte test packet plus zero padding; the reflector answers
    with the same size.
    """

    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8620
    size: Annotated[int, msgspec.Meta(ge=44, le=9000)] = 44
    family: Literal["auto", "ipv4", "ipv6"] = "auto"


class DnsSettings(KindSettings, frozen=True, kw_only=True):
    """One DNS lookup of `query_name`/`query_type`.

    With `resolver` unset, the target's address is the resolver and `query_name` must be given; with it
    set, the query name defaults to the target's host name.
    """

    timeout: Duration = Duration(2.0)
    resolver: str | None = None
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 53
    query_name: str | None = None
    query_type: Literal["A", "AAAA", "TXT", "CNAME", "MX", "NS", "SOA", "SRV", "PTR", "CAA", "HTTPS"] = "A"
    protocol: Literal["udp", "tcp"] = "udp"


class HttpSettings(KindSettings, frozen=True, kw_only=True):
    """One HTTP(S) GET timed by phase (dns, connect, tls, ttfb, total).

    With `url` unset, the target's address must be a URL.
    """

    timeout: Duration = Duration(10.0)
    url: str | None = None
    method: Literal["GET", "HEAD"] = "GET"
    expected_status: tuple[Annotated[int, msgspec.Meta(ge=100, le=599)], ...] = (200,)
    max_bytes: Size = Size(64 * 1024 * 1024)
    verify_tls: bool = True
    headers: dict[str, str] = {}


class ThroughputSettings(KindSettings, frozen=True, kw_only=True):
    """A goodput test over `streams` parallel TCP connections (kinds download and upload).

    A warm-up of at most `warmup` is discarded (until slow start is over), then goodput is measured over
    `window`, sampled every `sample_interval`. The test stops early at `max_bytes` moved (warm-up
    included) or `max_seconds` after its start; `timeout` bounds connecting and any stall of a stream.
    With `url` unset, the target's address is the responder (`host` or `host:port`, HTTP port 9311).
    """

    interval: Duration = Duration(3600.0)
    timeout: Duration = Duration(5.0)
    streams: Annotated[int, msgspec.Meta(ge=1, le=16)] = 4
    warmup: Duration = Duration(3.0)
    window: Duration = Duration(10.0)
    sample_interval: Duration = Duration(0.1)
    max_bytes: Size = Size(2 * 1024**3)
    max_seconds: Duration = Duration(30.0)
    url: str | None = None
    verify_tls: bool = True

    def max_duration(self) -> float:
        return float(self.max_seconds) + float(self.timeout)


# (field, lowest, highest) of the throughput settings, in seconds or bytes
_THROUGHPUT_BOUNDS = (
    ("timeout", 0.1, 120.0),
    ("warmup", 0.0, 30.0),
    ("window", 0.5, 300.0),
    ("sample_interval", 0.01, 1.0),
    ("max_bytes", 1, 1024**4),
    ("max_seconds", 1.0, 900.0),
)


def throughput_problem(settings: ThroughputSettings) -> tuple[str, str] | None:
    """(field, why) when these throughput settings cannot be used, else None; checked where settings enter."""
    for name, lowest, highest in _THROUGHPUT_BOUNDS:
        value = getattr(settings, name)
        if not lowest <= value <= highest:
            unit = "bytes" if name == "max_bytes" else "s"
            return name, f"must be within {lowest:g}..{highest:g} {unit}, got {value:g}"
    if settings.sample_interval * 2 > settings.window:
        return "window", f"{settings.window:g}s must hold at least two samples of sample_interval {settings.sample_interval:g}s"
    if settings.url is not None and not settings.url.startswith(("http://", "https://")):
        return "url", f"must be an http:// or https:// URL, got {settings.url[:80]!r}"
    return None


class DownloadSettings(ThroughputSettings, frozen=True, kw_only=True):
    """Download goodput: from the responder's `/download`, or from any HTTP(S) `url` (a CDN object)."""


class UploadSettings(ThroughputSettings, frozen=True, kw_only=True):
    """Upload goodput: to the responder's `/upload` (or `url`, a responder's upload URL)."""


SETTINGS_BY_KIND: dict[str, type[KindSettings]] = {
    "icmp": IcmpSettings,
    "tcp": TcpSettings,
    "dns": DnsSettings,
    "http": HttpSettings,
    "stamp": StampSettings,
    "download": DownloadSettings,
    "upload": UploadSettings,
}
