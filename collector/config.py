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

from .plan.load import load_plan
from .sla.settings import SlaConfig, check_sla_section
from .tls import TlsFileError, server_context

__all__ = [
    "DEFAULT_PORT",
    "TlsConfig",
    "ListenConfig",
    "InternalListenConfig",
    "InfluxConfig",
    "StoreConfig",
    "ProbeEntry",
    "LimitsConfig",
    "MetricsConfig",
    "SlaConfig",
    "PlanConfig",
    "CollectorConfig",
    "load_collector_config",
]

DEFAULT_PORT: Final = 9310
#: /metrics and /healthz on their own listener (`metrics_listen`), when it is given without a port
DEFAULT_METRICS_PORT: Final = 9319
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
#: Below this a normal batch of a few results would not fit; a typo such as `16` (bytes) is caught.
_MIN_BODY_BYTES: Final = 1024


class TlsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """TLS on the listener (1.2 and newer), with the server's certificate chain and key in PEM files that
    are read again on SIGHUP. With `client_ca_file`, mutual TLS: a probe must also present a certificate
    from that CA whose subject alternative name (or common name) is its probe id."""

    cert_file: Annotated[str, msgspec.Meta(min_length=1)]
    key_file: Annotated[str, msgspec.Meta(min_length=1)]
    client_ca_file: str = ""


class ListenConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The HTTP listener: ingest API, /metrics, /healthz, OpenAPI; HTTPS with `tls`."""

    host: Annotated[str, msgspec.Meta(min_length=1)] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = DEFAULT_PORT
    tls: TlsConfig | None = None


class InternalListenConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A second, plain-HTTP listener for /metrics and /healthz only (an internal interface for Prometheus)."""

    host: Annotated[str, msgspec.Meta(min_length=1)] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = DEFAULT_METRICS_PORT


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
    #: the probe registry (SQLite, collector/registry.py); empty: beside `path`, named after it
    #: (collector.db: collector.registry.db), so that collectors sharing a directory keep their own
    registry: str = ""

    @property
    def registry_path(self) -> str:
        """Where the probe registry lives."""
        return self.registry or str(Path(self.path).with_suffix(".registry.db"))

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
    During a token change-over `token_sha256` lists two hashes, the old token's and the new one's.
    """

    id: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
    token_sha256: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=2)]

    def token_hashes(self) -> tuple[str, ...]:
        """Every hash a token of this probe may have (two only while a token is being changed)."""
        return (self.token_sha256,) if isinstance(self.token_sha256, str) else tuple(self.token_sha256)


class LimitsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Bounds on requests and on what a probe may push, so that no client can make the collector use
    unbounded memory, fill /metrics, or crowd out the other probes."""

    #: applies to the body as sent and again after gzip inflation (a small body may inflate hugely)
    max_body_bytes: Size = Size(16 * 1024 * 1024)
    max_results_per_batch: Annotated[int, msgspec.Meta(ge=1, le=MAX_RESULTS_PER_BATCH)] = MAX_RESULTS_PER_BATCH
    #: per probe: pushes a second, and how many may come at once after a quiet spell (429 beyond)
    requests_per_second: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    request_burst: Annotated[int, msgspec.Meta(ge=1)] = 20
    #: per probe: results a second, and at once; a probe replaying an outage from its spool goes at this
    #: pace (429 with Retry-After beyond). The burst must hold the largest batch.
    results_per_second: Annotated[float, msgspec.Meta(gt=0)] = 5000.0
    result_burst: Annotated[int, msgspec.Meta(ge=1)] = 2 * MAX_RESULTS_PER_BATCH
    #: pushes in progress at once over all probes; more get 503 with Retry-After, never a queue in memory
    max_concurrent_requests: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 64
    #: distinct target names one probe may report; a batch naming more is refused (422)
    max_targets_per_probe: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 256


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What /metrics shows."""

    #: a (probe, target, kind) series that received nothing for this long leaves /metrics (0: never)
    series_ttl: Duration = Duration(3600.0)
    #: per-hop series (probe x target x hop of the latest path) /metrics shows at most; the paths beyond
    #: keep their end-to-end figures, and GET /api/v1/paths and the store have every hop
    path_hop_series: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 10_000


class PlanConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The central test plan served to probes (GET /api/v1/plan)."""

    #: plan.yaml, relative to this config's directory; checked with the config, re-read when it changes
    file: Annotated[str, msgspec.Meta(min_length=1)]


class CollectorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole collector config file."""

    listen: ListenConfig = ListenConfig()
    #: when set, /metrics is served only there, and /healthz there as well as on `listen`
    metrics_listen: InternalListenConfig | None = None
    store: StoreConfig = StoreConfig()
    probes: list[ProbeEntry] = []
    limits: LimitsConfig = LimitsConfig()
    metrics: MetricsConfig = MetricsConfig()
    sla: SlaConfig = SlaConfig()
    plan: PlanConfig | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def _check(config: CollectorConfig, document: YamlDocument) -> None:
    """Rules a type cannot say: hash format, unique probe ids and tokens, a usable body limit."""
    ids: dict[str, int] = {}
    hashes: dict[str, int] = {}
    for index, probe in enumerate(config.probes):
        if probe.id in ids:
            raise document.error(("probes", index, "id"), f"duplicate probe id {probe.id!r} (also probes[{ids[probe.id]}])")
        ids[probe.id] = index
        listed = isinstance(probe.token_sha256, list)
        for position, digest in enumerate(probe.token_hashes()):
            where: tuple[str | int, ...] = ("probes", index, "token_sha256") + ((position,) if listed else ())
            if not _SHA256_HEX.match(digest):
                raise document.error(where, "expected the SHA-256 of the token as 64 lowercase hex digits "
                                            "(print it with: qiancheng-collector hash-token TOKEN)")  # fmt: skip
            if digest in hashes:
                other = hashes[digest]
                raise document.error(where, "the same token twice" if other == index
                                     else f"same token as probes[{other}]: each probe needs its own token")  # fmt: skip
            hashes[digest] = index
    if config.limits.max_body_bytes < _MIN_BODY_BYTES:
        raise document.error(("limits", "max_body_bytes"), f"must be at least {_MIN_BODY_BYTES} bytes")
    if config.limits.result_burst < config.limits.max_results_per_batch:
        raise document.error(("limits", "result_burst"), f"must hold the largest batch: at least "
                             f"max_results_per_batch ({config.limits.max_results_per_batch})")  # fmt: skip
    _check_store(config.store, document)
    _check_listen(config, document)


def _check_listen(config: CollectorConfig, document: YamlDocument) -> None:
    """The TLS files load into a context (a key that does not match its certificate is caught now), and
    the internal listener does not take the public one's port."""
    if config.listen.tls is not None:
        try:
            tls = config.listen.tls
            server_context(tls.cert_file, tls.key_file, tls.client_ca_file)
        except TlsFileError as error:
            raise document.error(("listen", "tls", error.field), error.reason) from None
    internal = config.metrics_listen
    if internal is not None and (internal.host, internal.port) == (config.listen.host, config.listen.port):
        raise document.error(("metrics_listen", "port"), f"{internal.port} is listen.port: give the internal listener its own")


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
    sla = check_sla_section(config.sla, config.store.backend, config.store.path, document)
    return msgspec.structs.replace(config, sla=sla, plan=_check_plan(config, document)), document


def _check_plan(config: CollectorConfig, document: YamlDocument) -> PlanConfig | None:
    """The plan file loads and expands for every city (its errors name plan.yaml's own lines); its path
    is made absolute, relative to this config."""
    if config.plan is None:
        return None
    path = (Path(document.file).parent / config.plan.file).resolve()
    if not path.is_file():
        raise document.error(("plan", "file"), f"no such file: {str(path)!r}")
    load_plan(path, config.limits.max_targets_per_probe)
    return PlanConfig(file=str(path))
