"""The records the store keeps and returns; the API answers with the same records, so no field is copied.

A leaf module (it imports only core), so the store, the SLA judgement, the live state and the API
bodies can all use it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import msgspec

from qiancheng.core.result import Result

__all__ = ["BatchOutcome", "StoredResult", "ProbeRecord", "PathChange", "SeriesKey", "WindowRow", "SeriesWindow",
           "RegistryEntry", "path_change"]


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What storing one batch did: a repeated batch stores nothing; `new` are the results stored now.

    `conflicts` counts results whose (probe, seq) was already stored with another start time: not a
    re-send but a probe whose spool restarted its numbering (a reinstalled box). They are not stored.
    """

    duplicate: bool
    new: Sequence[Result] = field(default=())
    conflicts: int = 0

    @property
    def stored(self) -> int:
        return len(self.new)


class StoredResult(msgspec.Struct, frozen=True):
    """A stored result with the probe that sent it and the city and ISP of its batch (in JSON: `probe`)."""

    probe_id: str = msgspec.field(name="probe")
    city: str
    isp: str
    received_ns: int
    result: Result


class PathChange(msgspec.Struct, frozen=True):
    """A traced path that differed from the probe's previous one to the same target (in JSON: `probe`):
    when (the trace's start, UTC ns), and the fingerprints before and after."""

    probe_id: str = msgspec.field(name="probe")
    target: str
    start_ns: int
    fingerprint: str
    previous_fingerprint: str


def path_change(probe_id: str, result: Result) -> PathChange | None:
    """The path change `result` reports, if it is a `path` result that reports one."""
    if result.kind != "path" or not result.figures.get("path_changes"):
        return None
    return PathChange(probe_id, result.target.name, result.start_ns, result.info.get("fingerprint", ""),
                      result.info.get("previous_fingerprint", ""))


class ProbeRecord(msgspec.Struct, frozen=True):
    """A probe as its latest stored batch described it, and its totals in the store (in JSON: `probe`)."""

    probe_id: str = msgspec.field(name="probe")
    city: str
    isp: str
    labels: dict[str, str]
    stats: dict[str, float]
    last_seen_ns: int
    batches: int
    results: int


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """One measured series: who measured what, and how."""

    probe: str
    city: str
    isp: str
    target: str
    target_class: str
    kind: str

    def labels(self) -> dict[str, str]:
        return {"probe": self.probe, "city": self.city, "isp": self.isp, "target": self.target,
                "target_class": self.target_class, "kind": self.kind}  # fmt: skip


@dataclass(frozen=True, slots=True)
class WindowRow:
    """One stored result as an SLA window holds it: when, whether it succeeded, its figures and samples."""

    start_ns: int
    success: bool
    figures: dict[str, float]
    samples: list[float | None]


#: a series and its results inside a window, oldest first
SeriesWindow: TypeAlias = tuple[SeriesKey, list[WindowRow]]


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """A probe of the registry (collector/registry.py): who it is, where it came from, its token hashes."""

    id: str
    city: str
    isp: str
    source: Literal["config", "enrolled"]
    state: Literal["active", "revoked"]
    token_sha256: str
    previous_token_sha256: str | None  # also accepted (a change-over, or a rotation's grace period)
    previous_expires_ns: int | None  # when the previous token stops working; None: never
    created_ns: int
    changed_ns: int
