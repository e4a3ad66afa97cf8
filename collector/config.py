"""The collector's configuration: where it listens, where it stores, which probes may push, and limits.

YAML in, typed Structs out; defaults are declared here, once. Every error names file, line, field and
reason (via `core.configfile`) before anything listens.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from qiancheng.core.configfile import YamlDocument, load_struct
from qiancheng.core.result import NAME_PATTERN
from qiancheng.core.units import Duration, Size
from qiancheng.core.wire import MAX_RESULTS_PER_BATCH

from .sla.profiles import load_sla_profiles

__all__ = [
    "DEFAULT_PORT",
    "ListenConfig",
    "InfluxConfig",
    "StoreConfig",
    "ProbeEntry",
    "LimitsConfig",
    "MetricsConfig",
    "SlaConfig",
    "CollectorConfig",
    "load_collector_config",
]

DEFAULT_PORT: Final = 9310
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
#: Below this a normal batch of a few results would not fit; a typo such as `16` (bytes) is caught.
_MIN_BODY_BYTES: Final = 1024


class ListenConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The HTTP listener: ingest API, /metrics, /healthz, OpenAPI."""

    host: Annotated[str, msgspec.Meta(min_length=1)] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = DEFAULT_PORT


class InfluxConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An InfluxDB 2.x/3.x, or any server speaking its write API (`/api/v2/write`), that keeps the history."""

    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")]
    bucket: Annotated[str, msgspec.Meta(min_length=1)]
    org: str = ""  # InfluxDB 2.x needs it; 3.x ignores it
    #: the API token, read from this file at start (keeps the secret out of the config); or `token` inline
    token_file: str = ""
    token: str = ""
    #: one write, connect to answer; a store slower than this gets 503 + Retry-After, and the probe retries
    timeout: Duration = Duration(5.0)
    gzip: bool = True


class StoreConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where results are stored durably: `sqlite` (one local file) or `influx` (an InfluxDB write API)."""

    backend: Literal["sqlite", "influx"] = "sqlite"
    path: Annotated[str, msgspec.Meta(min_length=1)] = "/var/lib/qiancheng/collector.db"
    influx: InfluxConfig | None = None

    @property
    def location(self) -> str:
        """Where the backend keeps results, for logs: the SQLite path or the InfluxDB URL and bucket."""
        if self.backend == "influx" and self.influx is not None:
            return f"{self.influx.url} bucket={self.influx.bucket}"
        return self.path


class ProbeEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A probe allowed to push, and the SHA-256 (hex) of its bearer token.

    Only the hash is kept, so a leaked config does not leak credentials. Tokens are random secrets of
    32 bytes or more, so a plain fast hash is enough: there is nothing to brute-force that a slow
    password hash (bcrypt, scrypt) would protect, and a fast hash keeps auth cheap on every request.
    """

    id: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
    token_sha256: str


class LimitsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Bounds on one request, so that no client can make the collector use unbounded memory."""

    #: applies to the body as sent and again after gzip inflation (a small body may inflate hugely)
    max_body_bytes: Size = Size(16 * 1024 * 1024)
    max_results_per_batch: Annotated[int, msgspec.Meta(ge=1, le=MAX_RESULTS_PER_BATCH)] = MAX_RESULTS_PER_BATCH


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What /metrics shows."""

    #: a (probe, target, kind) series that received nothing for this long leaves /metrics (0: never)
    series_ttl: Duration = Duration(3600.0)


class SlaConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """SLA judgement (docs/sla.md): the profiles file, the sliding windows, how often, and the hysteresis."""

    #: sla.yaml, relative to this config's directory; empty: no judgement
    profiles: str = ""
    #: backend influx only: the SQLite file of recent results the judgement reads, relative to this
    #: config's directory; empty: sla-cache.db in store.path's directory
    cache: str = ""
    #: sliding windows over the stored results; the first one judges, the others are reported
    windows: tuple[Duration, ...] = (Duration(300.0), Duration(3600.0))
    #: one judgement pass every `interval`
    interval: Duration = Duration(60.0)
    #: a breach opens after this many consecutive bad windows, and closes after `close_after` good ones
    open_after: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    close_after: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3


class CollectorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole collector config file."""

    listen: ListenConfig = ListenConfig()
    store: StoreConfig = StoreConfig()
    probes: list[ProbeEntry] = []
    limits: LimitsConfig = LimitsConfig()
    metrics: MetricsConfig = MetricsConfig()
    sla: SlaConfig = SlaConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def _check(config: CollectorConfig, document: YamlDocument) -> None:
    """Rules a type cannot say: hash format, unique probe ids and tokens, a usable body limit."""
    ids: dict[str, int] = {}
    hashes: dict[str, int] = {}
    for index, probe in enumerate(config.probes):
        if not _SHA256_HEX.match(probe.token_sha256):
            raise document.error(
                ("probes", index, "token_sha256"),
                "expected the SHA-256 of the token as 64 lowercase hex digits "
                "(print it with: qiancheng-collector hash-token TOKEN)",
            )
        if probe.id in ids:
            raise document.error(("probes", index, "id"), f"duplicate probe id {probe.id!r} (also probes[{ids[probe.id]}])")
        if probe.token_sha256 in hashes:
            raise document.error(
                ("probes", index, "token_sha256"),
                f"same token as probes[{hashes[probe.token_sha256]}]: each probe needs its own token",
            )
        ids[probe.id] = index
        hashes[probe.token_sha256] = index
    if config.limits.max_body_bytes < _MIN_BODY_BYTES:
        raise document.error(("limits", "max_body_bytes"), f"must be at least {_MIN_BODY_BYTES} bytes")
    _check_store(config.store, document)


def _check_store(store: StoreConfig, document: YamlDocument) -> None:
    """The influx backend needs its section, one way to give the token, and a token file that exists."""
    if store.backend != "influx":
        return
    influx = store.influx
    if influx is None:
        raise document.error(("store", "backend"), "backend influx needs a store.influx section (url, bucket, token_file)")
    if influx.token and influx.token_file:
        raise document.error(("store", "influx", "token"), "give token_file or token, not both")
    if influx.token_file and not Path(influx.token_file).is_file():
        raise document.error(("store", "influx", "token_file"), f"no such file: {influx.token_file!r}")
    if influx.timeout <= 0:
        raise document.error(("store", "influx", "timeout"), "must be more than 0")


def load_collector_config(file: str | Path) -> tuple[CollectorConfig, YamlDocument]:
    """Read and validate a collector config; raises ConfigError naming file, line, field and reason.

    The document is returned too, so that later errors (a store path that cannot be opened, a port
    in use) can name their line.
    """
    config, document = load_struct(file, CollectorConfig)
    _check(config, document)
    return _with_sla_profiles(config, document), document


def _with_sla_profiles(config: CollectorConfig, document: YamlDocument) -> CollectorConfig:
    """Check the SLA section and its profiles file now (its errors name sla.yaml's own lines); the path
    is made absolute, relative to the directory of the config that names it."""
    sla = config.sla
    if not sla.windows:
        raise document.error(("sla", "windows"), "give at least one window, e.g. [5m, 1h]")
    for index, window in enumerate(sla.windows):
        if window < 1.0:
            raise document.error(("sla", "windows", index), "a window must be at least 1s")
    if sla.interval < 0.1:
        raise document.error(("sla", "interval"), "must be at least 100ms")
    if not sla.profiles:  # no judgement, no window cache
        return msgspec.structs.replace(config, sla=msgspec.structs.replace(sla, cache=""))
    path = Path(document.file).parent / sla.profiles
    load_sla_profiles(path)
    sla = msgspec.structs.replace(sla, profiles=str(path.resolve()), cache=_sla_cache(config, document))
    return msgspec.structs.replace(config, sla=sla)


def _sla_cache(config: CollectorConfig, document: YamlDocument) -> str:
    """The window cache's absolute path with backend influx (judgement reads it, docs/sla.md); empty with
    sqlite, whose store the judgement reads itself."""
    if config.store.backend == "sqlite":
        return ""
    given = config.sla.cache
    cache = (Path(document.file).parent / given if given else Path(config.store.path).parent / "sla-cache.db").resolve()
    field = ("sla", "cache") if given else ("sla", "profiles")
    if not cache.parent.is_dir():
        raise document.error(field, f"the SLA window cache's directory {str(cache.parent)!r} does not exist"
                             + ("" if given else " (set sla.cache)"))  # fmt: skip
    if cache == Path(config.store.path).resolve():
        raise document.error(field, "the SLA window cache is pruned to the last windows: give it its own file, not store.path")
    return str(cache)
