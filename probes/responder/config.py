"""Responder config: defaults declared once, here; sizes in bytes, durations in seconds.

`qiancheng-responder` with no config file runs on these defaults (loopback, the demo's ports); a
deployment writes a file such as configs/responder.yaml and sets `listen` to its public addresses.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

import dns.exception
import dns.name
import msgspec

from qiancheng.core.configfile import YamlDocument, format_path, load_struct
from qiancheng.core.errors import ConfigError
from qiancheng.core.responder_secret import read_secret
from qiancheng.core.udpst.auth import KeyFileError, load_key_table
from qiancheng.core.units import Duration, Size

__all__ = [
    "ResponderPorts",
    "ResponderLimits",
    "DnsZoneConfig",
    "ResponderConfig",
    "load_responder_config",
    "check_config",
    "DEFAULT_LISTEN",
]

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]

DEFAULT_LISTEN = ("127.0.0.1",)
_GIB = 1024**3


class ResponderPorts(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """TCP/UDP port of each service; 0 turns that service off."""

    http: Port = 9311
    echo: Port = 9312
    dns: Port = 9353  # UDP and TCP
    stamp: Port = 8620  # UDP, the STAMP reflector (RFC 8762's registered 862 needs root or CAP_NET_BIND_SERVICE)
    # UDP, the RFC 9946 capacity server's control port (IANA's is 24601); each test gets a port of its own.
    # Off unless asked for: it sends a line's full rate to whoever completes a setup
    udpst: Port = 0


class ResponderLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Bounds that keep one responder honest under load: sizes in bytes, durations in seconds."""

    max_download_bytes: Size = Size(10 * _GIB)
    max_upload_bytes: Size = Size(10 * _GIB)
    max_concurrent_transfers: Positive = 16  # downloads + uploads in flight; more get 503
    max_transfers_per_client: Positive = 8  # of those, from one client address; more get 503
    # bytes one client address may move a minute (a 10 s test at 10 Gbit/s moves 12.5 GB); in debt: 429
    max_client_bytes_per_minute: Size = Size(16 * _GIB)
    transfer_stall_timeout: Duration = Duration(30.0)  # a transfer making no progress this long is cut
    max_echo_connections: Positive = 256
    echo_idle_timeout: Duration = Duration(30.0)
    # RFC 9946 capacity tests: the bandwidth all tests of one direction may declare (Mbit/s; 0: no bound,
    # and no declaration needed), beyond which a test is answered "capacity exceeded"; tests at once
    # from one client address, and in all
    udpst_max_bandwidth: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 0
    udpst_tests_per_client: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4
    udpst_max_tests: Annotated[int, msgspec.Meta(ge=1, le=256)] = 64


class DnsZoneConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The test zone the DNS service answers for; every name under it gets the same records."""

    zone: str = "qiancheng.test."
    a: str | None = "127.0.0.1"  # null: A queries get NOERROR with no answer
    aaaa: str | None = "::1"
    txt: str | None = "qiancheng responder"
    # 0 so that no resolver between probe and responder caches the answer: every query a probe sends
    # through a resolver must reach us, or the lookup time measures the cache, not the path.
    ttl: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] = 0
    max_tcp_connections: Positive = 256
    tcp_idle_timeout: Duration = Duration(10.0)  # RFC 7766 §6.2.3: idle DNS/TCP connections close in seconds


class ResponderConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole responder config file."""

    # IP address(es) to listen on; IPv6 sockets are IPv6-only, so dual stack is ["0.0.0.0", "::"].
    listen: str | tuple[str, ...] = DEFAULT_LISTEN
    ports: ResponderPorts = msgspec.field(default_factory=ResponderPorts)
    limits: ResponderLimits = msgspec.field(default_factory=ResponderLimits)
    dns: DnsZoneConfig = msgspec.field(default_factory=DnsZoneConfig)
    # With a secret (core/responder_secret.py): /download and /upload want its bearer credential, and the
    # STAMP reflector answers only authenticated-mode packets whose HMAC it verifies. Null: open to all.
    secret_file: str | None = None
    # RFC 9946 keys (lines `<id>,<key>`, as OB-UDPST's udpst.keys): every capacity test must then be signed
    udpst_key_file: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @property
    def listen_hosts(self) -> tuple[str, ...]:
        """`listen` as a tuple, whether the file gave one address or a list."""
        return (self.listen,) if isinstance(self.listen, str) else self.listen


def _listen_error(listen: tuple[str, ...]) -> tuple[int | None, str] | None:
    """(index, reason) of the first bad listen address, or None when all are IP addresses."""
    if not listen:
        return None, "give at least one address to listen on"
    for index, host in enumerate(listen):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return index, f"not an IP address: {host!r} (use 0.0.0.0 and :: for every address)"
    if len(set(listen)) != len(listen):
        return None, "an address is listed twice"
    return None


def check_config(config: ResponderConfig, document: YamlDocument | None = None, file: str = "<command line>") -> None:
    """Checks msgspec cannot express; raises ConfigError naming the field (and line, given a document)."""

    def fail(path: list[str | int], reason: str) -> ConfigError:
        if document is not None:
            return document.error(path, reason)
        return ConfigError(file, reason, field=format_path(path))

    if (bad := _listen_error(config.listen_hosts)) is not None:
        index, reason = bad
        raise fail(["listen"] if index is None or isinstance(config.listen, str) else ["listen", index], reason)
    used: dict[int, str] = {}
    for name in ("http", "echo", "dns", "stamp", "udpst"):
        port = getattr(config.ports, name)
        if port and port in used:
            raise fail(["ports", name], f"port {port} is also the {used[port]} port")
        used.setdefault(port, name)
    limits = config.limits
    largest = max(limits.max_download_bytes, limits.max_upload_bytes)
    if limits.max_client_bytes_per_minute < largest:
        raise fail(["limits", "max_client_bytes_per_minute"], f"must hold the largest transfer ({int(largest)} bytes)")
    for name in ("transfer_stall_timeout", "echo_idle_timeout"):
        if getattr(limits, name) <= 0:
            raise fail(["limits", name], "must be longer than 0s")
    if config.secret_file is not None:
        try:
            read_secret(config.secret_file)
        except ValueError as error:
            raise fail(["secret_file"], str(error)) from None
    if config.udpst_key_file is not None:
        try:
            load_key_table(config.udpst_key_file)
        except KeyFileError as error:
            raise fail(["udpst_key_file"], str(error)) from None
    zone = config.dns
    if zone.tcp_idle_timeout <= 0:
        raise fail(["dns", "tcp_idle_timeout"], "must be longer than 0s")
    try:
        dns.name.from_text(zone.zone)
    except dns.exception.DNSException as error:
        raise fail(["dns", "zone"], f"not a DNS name: {error}") from None
    for field, version in (("a", 4), ("aaaa", 6)):
        value = getattr(zone, field)
        if value is None:
            continue
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            address = None
        if address is None or address.version != version:
            raise fail(["dns", field], f"not an IPv{version} address: {value!r}")
    if zone.txt is not None and len(zone.txt.encode()) > 1024:
        raise fail(["dns", "txt"], "longer than 1024 bytes (it must fit a DNS answer)")


def load_responder_config(file: str | Path) -> ResponderConfig:
    """Read and check a responder config; raises ConfigError naming file, line, field and reason."""
    config, document = load_struct(file, ResponderConfig)
    check_config(config, document)
    return config
