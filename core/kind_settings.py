"""Per-kind measurement settings: defaults declared once, here; durations in seconds, sizes in bytes.

The config loader turns readable values (`30s`, `500ms`, `64MiB`) into these types; measurement modules
receive them already validated. They are shared because both the probe's own config and a central test
plan name them.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .responder_secret import read_secret
from .stamp_packet import AUTHENTICATED_PACKET_BYTES, PACKET_BYTES
from .units import Duration, Size

__all__ = [
    "KindSettings",
    "IcmpSettings",
    "TcpSettings",
    "DnsSettings",
    "HttpSettings",
    "StampSettings",
    "ThroughputSettings",
    "DownloadSettings",
    "UploadSettings",
    "PathSettings",
    "CapacitySettings",
    "settings_problem",
    "throughput_problem",
]


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

    `size` is the UDP payload in bytes: the test packet plus zero padding (unset: the packet alone, 44
    bytes, or 112 authenticated); the reflector answers with the same size. With `secret_file` (the
    responder's shared secret, core/responder_secret.py) the train runs in authenticated mode (RFC 8762
    §4.2.2), its packets and the replies signed with HMAC-SHA-256.
    """

    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8620
    size: Annotated[int, msgspec.Meta(ge=44, le=9000)] | None = None
    family: Literal["auto", "ipv4", "ipv6"] = "auto"
    secret_file: str | None = None

    def packet_size(self) -> int:
        """The bytes each packet carries: `size`, or the mode's base packet."""
        if self.size is not None:
            return self.size
        return PACKET_BYTES if self.secret_file is None else AUTHENTICATED_PACKET_BYTES


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
    secret_file: str | None = None  # the responder's shared secret: sent as its bearer credential

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
    return _secret_problem(settings.secret_file)


class PathSettings(KindSettings, frozen=True, kw_only=True):
    """A traced path (kind `path`): `rounds` rounds of TTL-limited probes from `first_ttl` to at most
    `max_ttl`, over ICMP echo, UDP or TCP SYN to `port` (UDP 33434 and TCP 443 unless given).

    Each flow keeps the fields load balancers hash on constant in every round (Paris traceroute), so a
    flow follows one of several equal-cost paths throughout; `flows` > 1 traces that many, to show the
    alternatives. Within a round one probe leaves every `packet_interval`; a round starts every
    `round_interval`; `timeout` is the wait for each probe's answer. A round goes no further than the
    destination once it has answered, nor more than `gap_limit` silent TTLs past the last hop that
    answered. `asn_file` maps prefixes to AS numbers (lines `PREFIX ASN`, # comments), looked up
    locally; `reverse_dns` asks for each hop's name.
    """

    interval: Duration = Duration(300.0)
    timeout: Duration = Duration(2.0)
    protocol: Literal["icmp", "udp", "tcp"] = "icmp"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    family: Literal["auto", "ipv4", "ipv6"] = "auto"
    rounds: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    round_interval: Duration = Duration(1.0)
    packet_interval: Duration = Duration(0.01)
    first_ttl: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    max_ttl: Annotated[int, msgspec.Meta(ge=1, le=64)] = 30
    gap_limit: Annotated[int, msgspec.Meta(ge=1, le=64)] = 5
    flows: Annotated[int, msgspec.Meta(ge=1, le=8)] = 1
    asn_file: str | None = None
    reverse_dns: bool = False

    def destination_port(self) -> int:
        """The port probes go to: `port`, else 33434 for UDP (traceroute's) and 443 for TCP."""
        if self.port is not None:
            return self.port
        return 443 if self.protocol == "tcp" else 33434

    def max_duration(self) -> float:
        probes_per_round = (self.max_ttl - self.first_ttl + 1) * self.flows
        last_round = (self.rounds - 1) * float(self.round_interval)
        return last_round + probes_per_round * float(self.packet_interval) + float(self.timeout)


def _path_problem(settings: PathSettings) -> tuple[str, str] | None:
    """(field, why) when these path settings cannot be used, else None; checked where settings enter."""
    if settings.first_ttl > settings.max_ttl:
        return "first_ttl", f"must not exceed max_ttl ({settings.max_ttl}), got {settings.first_ttl}"
    for name, lowest, highest in (("timeout", 0.05, 30.0), ("round_interval", 0.01, 60.0),
                                  ("packet_interval", 0.0, 1.0)):
        value = getattr(settings, name)
        if not lowest <= value <= highest:
            return name, f"must be within {lowest:g}..{highest:g} s, got {value:g}"
    if settings.asn_file is not None:
        from .asn_table import read_asn_table  # only configs that name a table pay for reading it

        try:
            read_asn_table(settings.asn_file)
        except ValueError as error:
            return "asn_file", str(error)
    return None


def settings_problem(settings: KindSettings) -> tuple[str, str] | None:
    """(field, why) when these settings of any kind cannot be used (rules spanning fields, files they
    name), else None; checked wherever settings enter."""
    if isinstance(settings, ThroughputSettings):
        return throughput_problem(settings)
    if isinstance(settings, StampSettings):
        return _stamp_problem(settings)
    if isinstance(settings, PathSettings):
        return _path_problem(settings)
    if isinstance(settings, CapacitySettings):
        return _capacity_problem(settings)
    return None


def _stamp_problem(settings: StampSettings) -> tuple[str, str] | None:
    """(field, why) when these STAMP settings cannot be used, else None; checked where settings enter."""
    if settings.secret_file is not None and settings.packet_size() < AUTHENTICATED_PACKET_BYTES:
        return "size", (f"an authenticated STAMP packet is at least {AUTHENTICATED_PACKET_BYTES} bytes "
                        f"(RFC 8762 §4.2.2), got {settings.packet_size()}")
    return _secret_problem(settings.secret_file)


def _secret_problem(file: str | None) -> tuple[str, str] | None:
    """("secret_file", why) when the file named cannot serve as a secret, else None."""
    if file is None:
        return None
    try:
        read_secret(file)
    except ValueError as error:
        return "secret_file", str(error)
    return None


class CapacitySettings(KindSettings, frozen=True, kw_only=True):
    """Maximum IP-layer capacity (RFC 9097) by the UDP Speed Test Protocol (RFC 9946), against a server's
    control port (the responder's `ports.udpst`, or OB-UDPST's `udpst`).

    `duration` is the test (whole seconds, 5-3600), cut into `sub_interval`s (0.1-10 s) whose highest
    rate is the result; the server moves the rate after each `trial_interval` (5-250 ms) by `algorithm`
    (B: TR-471's; C: multiply and retry) unless `fixed_rate` (Mbit/s) asks for one rate. `timeout`
    bounds the control exchange. The load's sizes follow `jumbo` and `traditional_mtu`, which must match
    the server's. `max_bandwidth` (Mbit/s) is what the test declares to the server's admission control.
    With `key_file` (`<id>,<key>` lines) the test is signed with the key `key_id`.
    """

    interval: Duration = Duration(3600.0)
    timeout: Duration = Duration(3.0)
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 24601
    family: Literal["auto", "ipv4", "ipv6"] = "auto"
    direction: Literal["download", "upload"] = "download"
    duration: Duration = Duration(10.0)
    sub_interval: Duration = Duration(1.0)
    trial_interval: Duration = Duration(0.05)
    algorithm: Literal["B", "C"] = "B"
    fixed_rate: Annotated[int, msgspec.Meta(ge=1, le=72_000)] | None = None
    connections: Annotated[int, msgspec.Meta(ge=1, le=24)] = 1
    jumbo: bool = True
    traditional_mtu: bool = False
    low_threshold: Duration = Duration(0.030)
    upper_threshold: Duration = Duration(0.090)
    seq_error_threshold: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 10
    max_bandwidth: Annotated[int, msgspec.Meta(ge=0, le=32767)] = 0
    key_file: str | None = None
    key_id: Annotated[int, msgspec.Meta(ge=0, le=255)] = 0

    def max_duration(self) -> float:
        # the control exchange, the test, the server's stop 0.5 s after it and our own 3.5 s later
        return float(self.timeout) + float(self.duration) + 4.0


def _capacity_problem(settings: CapacitySettings) -> tuple[str, str] | None:
    """(field, why) when these capacity settings cannot be used, else None; checked where settings enter."""
    duration, sub, trial = float(settings.duration), float(settings.sub_interval), float(settings.trial_interval)
    if not 5 <= duration <= 3600 or duration != int(duration):
        return "duration", f"must be whole seconds within 5..3600 (RFC 9946's range), got {duration:g}"
    if not 0.1 <= sub <= 10 or sub > duration:
        return "sub_interval", f"must be within 0.1..10 s and at most the duration, got {sub:g}"
    if not 0.005 <= trial <= 0.25 or sub < 2 * trial:
        return "trial_interval", f"must be within 5..250 ms and at most half the sub-interval, got {trial:g}"
    if not 0.001 <= float(settings.low_threshold) <= float(settings.upper_threshold) <= 10:
        return "low_threshold", "must be at least 1 ms and at most upper_threshold (at most 10 s)"
    if settings.key_file is not None:
        from .udpst.auth import KeyFileError, load_key_table  # only configs that name keys pay for reading them

        try:
            table = load_key_table(settings.key_file)
        except KeyFileError as error:
            return "key_file", str(error)
        if table.get(settings.key_id) is None:
            return "key_id", f"{settings.key_file} has no key {settings.key_id}"
    return None


class DownloadSettings(ThroughputSettings, frozen=True, kw_only=True):
    """Download goodput: from the responder's `/download`, or from any HTTP(S) `url` (a CDN object)."""


class UploadSettings(ThroughputSettings, frozen=True, kw_only=True):
    """Upload goodput: to the responder's `/upload` (or `url`, a responder's upload URL)."""
