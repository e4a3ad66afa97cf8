"""A target as configured: its name, address, class, labels and the kinds that measure it, with their
settings; and the rules that decide whether a kind can measure it.

One shape for the three places a target is written: a probe's own `targets:`, the central plan's
targets once expanded for a probe (collector/plan), and the plan as the collector sends it
(`core.wire.Plan`). Each place checks its targets with the same rules, so a plan the collector accepts
is a plan every probe accepts.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

from .configfile import PathPart, YamlDocument
from .kind_settings import DnsSettings, HttpSettings, KindSettings, ThroughputSettings, settings_problem
from .kinds import KINDS, kind_named
from .result import NAME_PATTERN, Target
from .wire import Label, LabelName

__all__ = ["TargetSpec", "check_address", "split_host_port", "check_kind_name", "spec_settings", "spec_target"]

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
ClassName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$(?!\n)")]

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9])?)*\.?$")


class TargetSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A target and its kinds: `kinds` maps each kind to its settings (or lists kinds with defaults)."""

    name: Name
    address: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    kinds: dict[str, dict[str, Any] | None] | list[str]
    target_class: ClassName = msgspec.field(default="edge", name="class")
    labels: Annotated[dict[LabelName, Label], msgspec.Meta(max_length=16)] = {}
    enabled: bool = True


def spec_target(spec: TargetSpec) -> Target:
    """The target a result names."""
    return Target(name=spec.name, address=spec.address, target_class=spec.target_class)


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


def check_kind_name(kind: str, path: list[PathPart], document: YamlDocument) -> None:
    if kind not in KINDS:
        raise document.error(path, f"unknown kind {kind!r} (available: {', '.join(KINDS)})")


def spec_settings(
    spec: TargetSpec, defaults: dict[str, dict[str, Any]], document: YamlDocument, here: list[PathPart]
) -> list[tuple[str, KindSettings]]:
    """Each kind of `spec` with its settings (`defaults` for the kind, then the target's own), checked
    against the target; raises ConfigError at `here` + the field at fault."""
    kinds = {kind: {} for kind in spec.kinds} if isinstance(spec.kinds, list) else {k: v or {} for k, v in spec.kinds.items()}
    if not kinds:
        raise document.error(here + ["kinds"], "no kinds: give at least one, e.g. [icmp]")
    target = spec_target(spec)
    checked = []
    for kind, overrides in kinds.items():
        path = here + ["kinds", kind]
        check_kind_name(kind, path, document)
        settings = document.convert({**defaults.get(kind, {}), **overrides}, kind_named(kind).settings, path)
        _check_job(target, kind, settings, path, here, document)
        checked.append((kind, settings))
    return checked


def _check_job(target: Target, kind: str, settings: KindSettings, path: list[PathPart], here: list[PathPart], document: YamlDocument) -> None:
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
