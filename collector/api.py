"""The JSON bodies the collector answers with; the OpenAPI document is generated from these Structs."""

from __future__ import annotations

from typing import Literal

import msgspec

from qiancheng.probes.result import Result

__all__ = [
    "Ack",
    "ErrorBody",
    "Health",
    "LatestEntry",
    "ProbeSummary",
    "Totals",
    "LatestResponse",
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


class LatestEntry(msgspec.Struct, frozen=True):
    """The latest result (by start time) of one (probe, target, kind), with the batch's city and ISP."""

    probe: str
    city: str
    isp: str
    received_ns: int
    result: Result


class ProbeSummary(msgspec.Struct, frozen=True):
    """What the collector knows of a probe from its latest stored batch."""

    probe: str
    city: str
    isp: str
    labels: dict[str, str]
    stats: dict[str, float]
    last_seen_ns: int
    batches: int
    results: int


class Totals(msgspec.Struct, frozen=True):
    """Results and batches in the store (for the probe asked about, or for all)."""

    results: int
    batches: int


class LatestResponse(msgspec.Struct, frozen=True):
    """Body of GET /api/v1/latest."""

    results: list[LatestEntry]
    probes: list[ProbeSummary]
    totals: Totals


_encoder = msgspec.json.Encoder()


def encode(body: msgspec.Struct) -> bytes:
    """A response Struct as JSON bytes."""
    return _encoder.encode(body)
