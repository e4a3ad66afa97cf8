"""The probe's configuration: identity, collector, spool, scheduler, and what to measure.

YAML in, typed structures out, every error naming file, line, field and reason before anything
starts. Per-kind settings come from `core.kind_settings` (defaults declared there, once); the config's
`defaults:` section overrides them for every target, and a target's `kinds:` entry overrides those.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

from qiancheng.core.configfile import YamlDocument, load_struct
from qiancheng.core.kind_settings import (
    DnsSettings,
    HttpSettings,
    KindSettings,
    ThroughputSettings,
    settings_problem,
)
from qiancheng.core.kinds import KINDS, kind_named
from qiancheng.core.result import NAME_PATTERN, Target
from qiancheng.core.units import Duration, Size
from qiancheng.core.wire import Label

from .transport import TlsSettingsError, client_context

__all__ = [
    "ProbeIdentity",
    "CollectorSettings",
    "SpoolSettings",
    "SchedulerSettings",
    "Job",
    "ProbeConfig",
    "load_probe_config",
    "check_address",
]

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
LabelName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$(?!\n)")]

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9])?)*\.?$")


class ProbeIdentity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who is measuring: a unique probe id, its city and ISP, and free labels (site, access type...)."""

    id: Name
    city: Label
    isp: Label
    labels: Annotated[dict[LabelName, Label], msgspec.Meta(max_length=16)] = {}  # as the wire format allows


class CollectorSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where results go, and how batches are formed and retried."""

    url: str
    token: str | None = None
    token_file: str | None = None
    batch_max_results: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    batch_max_age: Duration = Duration(5.0)
    timeout: Duration = Duration(10.0)
    backoff_base: Duration = Duration(1.0)
    backoff_cap: Duration = Duration(60.0)
    #: https: trust only this CA (PEM) for the collector's certificate, instead of the system's CAs
    ca_file: str | None = None
    #: https: a client certificate and its key (PEM) for a collector that requires mutual TLS
    cert_file: str | None = None
    key_file: str | None = None
    #: https: do not verify the collector's certificate at all (warned at every start; for tests only)
    insecure_skip_verify: bool = False

    def tls(self) -> ssl.SSLContext | None:
        """The TLS context for an https URL (None for http); raises TlsSettingsError."""
        if urlsplit(self.url).scheme != "https":
            return None
        return client_context(self.ca_file, self.cert_file, self.key_file, verify=not self.insecure_skip_verify)


class SpoolSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The durable on-disk queue of results not yet acknowledged by the collector."""

    path: str = "/var/lib/qiancheng/spool.db"
    max_bytes: Size = Size(256 * 1024 * 1024)


class SchedulerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How many tests may run at once, and how long shutdown may spend flushing."""

    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 32
    shutdown_flush: Duration = Duration(3.0)


class _TargetEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    address: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    kinds: dict[str, dict[str, Any] | None] | list[str]
    target_class: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$(?!\n)")] = msgspec.field(
        default="edge", name="class"
    )
    labels: dict[LabelName, Label] = {}
    enabled: bool = True


class _ConfigFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    probe: ProbeIdentity
    collector: CollectorSettings
    targets: list[_TargetEntry]
    spool: SpoolSettings = SpoolSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    defaults: dict[str, dict[str, Any]] = {}
    log_level: str = "info"


@dataclass(frozen=True, slots=True)
class Job:
    """One scheduled (target, kind) with its settings; equal jobs survive a reload untouched."""

    target: Target
    kind: str
    settings: KindSettings
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.target.name, self.kind)


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """The validated probe configuration."""

    file: str
    probe: ProbeIdentity
    collector: CollectorSettings
    token: str
    spool: SpoolSettings
    scheduler: SchedulerSettings
    jobs: tuple[Job, ...]
    log_level: str


def check_address(address: str, kind: str) -> str | None:
    """Why `address` cannot be measured by `kind`, or None if it can."""
    if "://" in address:
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https"):
            return f"URL scheme must be http or https, got {parts.scheme!r}"
        if not parts.hostname:
            return "URL has no host"
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as error:
            return f"bad port in URL: {error}"
        return None if kind in ("http", "download", "upload") else f"kind {kind} needs a host, not a URL"
    host, _ = split_host_port(address)
    if host is None:
        return f"not an IP address, host name or host:port: {address!r}"
    return None


def split_host_port(address: str) -> tuple[str | None, int | None]:
    """(host, port) from `host`, `host:port`, `v6`, `[v6]` or `[v6]:port`; host None if malformed."""
    host, port = address, None
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            return None, None
        host, rest = address[1:end], address[end + 1 :]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None, None
            port = int(rest[1:])
    elif address.count(":") == 1:
        host, port_text = address.split(":")
        if not port_text.isdigit():
            return None, None
        port = int(port_text)
    if port is not None and not 0 < port < 65536:
        return None, None
    try:
        ipaddress.ip_address(host)
        return host, port
    except ValueError:
        return (host, port) if ":" not in host and _HOSTNAME.match(host) else (None, None)


def load_probe_config(file: str | Path) -> ProbeConfig:
    """Load and validate a probe config; raises ConfigError naming file, line, field and reason."""
    raw, document = load_struct(file, _ConfigFile)
    _check_collector(raw.collector, document)
    defaults = _defaults(raw.defaults, document)
    jobs: list[Job] = []
    names: set[str] = set()
    for index, entry in enumerate(raw.targets):
        if entry.name in names:
            raise document.error(["targets", index, "name"], f"target name {entry.name!r} is used twice")
        names.add(entry.name)
        if entry.enabled:
            jobs.extend(_target_jobs(entry, index, defaults, document))
    if not raw.targets:
        raise document.error(["targets"], "no targets: give at least one")
    return ProbeConfig(
        file=str(file),
        probe=raw.probe,
        collector=raw.collector,
        token=_token(raw.collector, document),
        spool=raw.spool,
        scheduler=raw.scheduler,
        jobs=tuple(jobs),
        log_level=raw.log_level,
    )


def _check_collector(collector: CollectorSettings, document: YamlDocument) -> None:
    parts = urlsplit(collector.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise document.error(["collector", "url"], f"expected an http(s) URL such as https://collector:9310, got {collector.url!r}")
    if (collector.token is None) == (collector.token_file is None):
        raise document.error(["collector"], "give exactly one of token and token_file")
    tls_keys = {"ca_file": collector.ca_file, "cert_file": collector.cert_file, "key_file": collector.key_file,
                "insecure_skip_verify": collector.insecure_skip_verify or None}  # fmt: skip
    if parts.scheme == "http" and (given := [key for key, value in tls_keys.items() if value is not None]):
        raise document.error(["collector", given[0]], "applies to an https:// collector URL only")
    if (collector.cert_file is None) != (collector.key_file is None):
        raise document.error(["collector", "key_file" if collector.key_file is None else "cert_file"],
                             "give cert_file and key_file together")  # fmt: skip
    if collector.insecure_skip_verify and collector.ca_file is not None:
        raise document.error(["collector", "insecure_skip_verify"], "contradicts ca_file: a CA to verify against")
    try:
        collector.tls()
    except TlsSettingsError as error:
        raise document.error(["collector", error.field], error.reason) from None


def _token(collector: CollectorSettings, document: YamlDocument) -> str:
    if collector.token is not None:
        token = collector.token.strip()
    else:
        assert collector.token_file is not None
        try:
            token = Path(collector.token_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise document.error(["collector", "token_file"], f"cannot read {collector.token_file}: {error.strerror}") from None
    if not token:
        raise document.error(["collector", "token" if collector.token is not None else "token_file"], "the token is empty")
    return token


def _defaults(raw: dict[str, dict[str, Any]], document: YamlDocument) -> dict[str, dict[str, Any]]:
    """The `defaults:` section, each kind's entry checked on its own so errors point at it."""
    for kind, values in raw.items():
        _check_kind_name(kind, ["defaults", kind], document)
        document.convert(values or {}, kind_named(kind).settings, ["defaults", kind])
    return {kind: dict(values or {}) for kind, values in raw.items()}


def _check_kind_name(kind: str, path: list[str | int], document: YamlDocument) -> None:
    if kind not in KINDS:
        raise document.error(path, f"unknown kind {kind!r} (available: {', '.join(KINDS)})")


def _target_jobs(entry: _TargetEntry, index: int, defaults: dict[str, dict[str, Any]], document: YamlDocument) -> list[Job]:
    here: list[str | int] = ["targets", index]
    kinds = {kind: {} for kind in entry.kinds} if isinstance(entry.kinds, list) else {k: v or {} for k, v in entry.kinds.items()}
    if not kinds:
        raise document.error(here + ["kinds"], "no kinds: give at least one, e.g. [icmp]")
    target = Target(name=entry.name, address=entry.address, target_class=entry.target_class)
    jobs = []
    for kind, overrides in kinds.items():
        path = here + ["kinds", kind]
        _check_kind_name(kind, path, document)
        settings = document.convert({**defaults.get(kind, {}), **overrides}, kind_named(kind).settings, path)
        _check_job(target, kind, settings, path, here, document)
        jobs.append(Job(target=target, kind=kind, settings=settings, labels=tuple(sorted(entry.labels.items()))))
    return jobs


def _check_job(target: Target, kind: str, settings: KindSettings, path: list[str | int], here: list[str | int], document: YamlDocument) -> None:
    """Rules that span fields: the address fits the kind, and the interval exceeds the test."""
    url = settings.url if isinstance(settings, (HttpSettings, ThroughputSettings)) else None
    if url is not None:
        if problem := check_address(url, kind):
            raise document.error(path + ["url"], problem)
    elif kind == "http" and "://" not in target.address:
        raise document.error(here + ["address"], "kind http needs a URL: give the address as http(s)://... or set url")
    elif not (isinstance(settings, DnsSettings) and settings.resolver is not None) and (problem := check_address(target.address, kind)):
        raise document.error(here + ["address"], problem)
    if isinstance(settings, DnsSettings):
        if settings.resolver is not None and check_address(settings.resolver, "dns"):
            raise document.error(path + ["resolver"], f"not an IP address or host:port: {settings.resolver!r}")
        if settings.resolver is None and not settings.query_name:
            raise document.error(path, "give query_name (the target's address is the resolver)")
    if bad := settings_problem(settings):
        raise document.error(path + [bad[0]], bad[1])
    longest = settings.max_duration()
    if settings.interval < longest:
        raise document.error(path + ["interval"], f"interval {settings.interval:g}s is shorter than the test it schedules (up to {longest:g}s)")
    if settings.interval <= 0:
        raise document.error(path + ["interval"], "interval must be > 0")
