"""The JSON bodies the collector answers with; the OpenAPI document is generated from these Structs
(and from the store's records, which GET /api/v1/latest returns as they are)."""

from __future__ import annotations

from typing import Literal

import msgspec

from .records import PathChange, ProbeRecord, StoredResult
from .sla.blame import Blame

__all__ = [
    "Ack",
    "ErrorBody",
    "Health",
    "Totals",
    "LatestResponse",
    "PathEntry",
    "PathsResponse",
    "SlaWindow",
    "SlaObjective",
    "SlaResponse",
    "FleetProbe",
    "ProbesResponse",
    "encode",
]


class Ack(msgspec.Struct, frozen=True):
    """A batch is durably stored (or was already): `accepted` results acknowledged, `stored` of them new."""

    accepted: int
    duplicate: bool
    stored: int


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """Why a request was refused; `field` is the JSON path of the offending value, when there is one."""

    error: str
    field: str | None = None


class Health(msgspec.Struct, frozen=True):
    """Liveness and readiness: `ok` when the store answers."""

    status: Literal["ok", "failing"]
    store_ok: bool
    store_backend: str
    version: str
    uptime_seconds: float


class FleetProbe(msgspec.Struct, frozen=True):
    """A registered probe and its health as the collector sees it (collector/fleet.py)."""

    id: str
    city: str
    isp: str
    #: `config`: from the collector config's probes list; `enrolled`: by an enrollment code
    source: Literal["config", "enrolled"]
    #: `revoked`; `never` (no batch yet); `stale` (latest batch older than stale_after); `ok`
    state: Literal["ok", "stale", "never", "revoked"]
    #: when the collector last received a valid batch from it, UTC ns; null: never
    last_seen_ns: int | None
    #: results waiting in its spool, and results its full spool dropped, as its latest batch said
    spool_backlog: float | None
    spool_dropped_total: float | None
    labels: dict[str, str]
    #: its software version and the version of the central plan it runs, as its latest batch said
    version: str | None = None
    plan: str | None = None
    #: 0: it runs the plan this collector would give it now; else seconds since it was seen on another
    plan_outdated_seconds: float | None = None
    #: how long its agent has run, and whether its box's clock is synchronised, as its latest batch said
    uptime_seconds: float | None = None
    clock_synced: bool | None = None


class ProbesResponse(msgspec.Struct, frozen=True):
    """Body of GET /api/v1/probes."""

    probes: list[FleetProbe]
    #: how many of the listed probes are in each state
    counts: dict[str, int]
    stale_after_seconds: float


class Totals(msgspec.Struct, frozen=True):
    """Results and batches in the store (for the probe asked about, or for all)."""

    results: int
    batches: int


class LatestResponse(msgspec.Struct, frozen=True):
    """Body of GET /api/v1/latest."""

    #: the latest result (by start time) of each (probe, target, kind), with its batch's city and ISP
    results: list[StoredResult]
    #: what the collector knows of each probe from its latest stored batch
    probes: list[ProbeRecord]
    totals: Totals


class PathEntry(msgspec.Struct, frozen=True):
    """One (probe, target) traced: its latest path (`latest.result.hops`) and its latest path changes,
    newest first."""

    latest: StoredResult
    changes: list[PathChange]


class PathsResponse(msgspec.Struct, frozen=True):
    """Body of GET /api/v1/paths."""

    paths: list[PathEntry]


class SlaWindow(msgspec.Struct, frozen=True):
    """An indicator over one sliding window: its value in base units (null: no data) and the results read."""

    window: str
    seconds: float
    value: float | None
    results: int


class SlaObjective(msgspec.Struct, frozen=True):
    """Where one objective of one SLA profile stands for one series (probe, target, kind).

    `indicator` is the objective's name (the metric label), `measures` the indicator it computes; `status`
    is `ok`, `breach` or `no_data` since `since_ns` (UTC ns); streaks count consecutive judged windows.
    """

    probe: str
    city: str
    isp: str
    target: str
    target_class: str
    kind: str
    profile: str
    indicator: str
    measures: str
    unit: str
    bound: Literal["max", "min"]
    threshold: float
    status: Literal["ok", "breach", "no_data"]
    since_ns: int
    bad_streak: int
    good_streak: int
    windows: list[SlaWindow]
    #: while breached: the hop of the target's traced path the breach lies at, when the probe traces it
    blame: Blame | None = None


class SlaResponse(msgspec.Struct, frozen=True):
    """Body of GET /api/v1/sla: the latest judgement pass (judged_ns 0: none yet) and its objectives."""

    judged_ns: int
    pass_seconds: float
    open_after: int
    close_after: int
    objectives: list[SlaObjective]


_encoder = msgspec.json.Encoder()


def encode(body: msgspec.Struct) -> bytes:
    """A response Struct as JSON bytes."""
    return _encoder.encode(body)
