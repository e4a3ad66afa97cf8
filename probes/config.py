"""The probe's configuration: identity, collector, spool, scheduler, and what to measure.

YAML in, typed structures out, every error naming file, line, field and reason before anything
starts. Per-kind settings come from `core.kind_settings` (defaults declared there, once); the config's
`defaults:` section overrides them for every target, and a target's `kinds:` entry overrides those.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

from qiancheng.core.configfile import PathPart, YamlDocument, load_struct
from qiancheng.core.kind_settings import KindSettings
from qiancheng.core.kinds import kind_named
from qiancheng.core.result import NAME_PATTERN, Target
from qiancheng.core.targets import (
    TargetSpec,
    check_address,
    check_kind_name,
    spec_settings,
    spec_target,
    split_host_port,
)
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
    "PlanSettings",
    "check_address",
    "split_host_port",
    "spec_jobs",
]

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
LabelName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$(?!\n)")]


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


class PlanSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The collector's central test plan (GET /api/v1/plan): how often to ask for it, and where the last
    good one is kept, so that the probe measures through a collector outage and after a restart."""

    poll_interval: Duration = Duration(300.0)
    #: the last good plan (JSON); empty: plan.json beside the spool
    file: str = ""

    def saved_path(self, spool: SpoolSettings) -> Path:
        return Path(self.file) if self.file else Path(spool.path).parent / "plan.json"


class _ConfigFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    probe: ProbeIdentity
    collector: CollectorSettings
    targets: list[TargetSpec] = []
    plan: PlanSettings | None = None
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
    #: the version of the collector's plan the job came from (empty for the probe's own targets); not
    #: part of the job's identity: a new plan that leaves a job as it was keeps its slots
    plan: str = field(default="", compare=False)

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
    #: the collector's plan is asked for (and merged with `jobs`, which win by target name)
    plan: PlanSettings | None = None


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
            jobs.extend(spec_jobs(entry, defaults, document, ["targets", index]))
    if not raw.targets and raw.plan is None:
        raise document.error(["targets"], "no targets: give at least one, or `plan: {}` to take them from the collector")
    if raw.plan is not None and raw.plan.poll_interval < 1:
        raise document.error(["plan", "poll_interval"], "must be at least 1s")
    return ProbeConfig(
        file=str(file),
        probe=raw.probe,
        collector=raw.collector,
        token=_token(raw.collector, document),
        spool=raw.spool,
        scheduler=raw.scheduler,
        jobs=tuple(jobs),
        log_level=raw.log_level,
        plan=raw.plan,
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
        check_kind_name(kind, ["defaults", kind], document)
        document.convert(values or {}, kind_named(kind).settings, ["defaults", kind])
    return {kind: dict(values or {}) for kind, values in raw.items()}


def spec_jobs(spec: TargetSpec, defaults: dict[str, dict[str, Any]], document: YamlDocument, here: list[PathPart], plan: str = "") -> list[Job]:
    """The jobs of one target, its settings checked; `plan`: the version of the plan it came from."""
    target, labels = spec_target(spec), tuple(sorted(spec.labels.items()))
    return [Job(target=target, kind=kind, settings=settings, labels=labels, plan=plan)
            for kind, settings in spec_settings(spec, defaults, document, here)]  # fmt: skip
