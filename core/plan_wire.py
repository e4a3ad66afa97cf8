"""The central test plan as the collector sends it to one probe (`GET /api/v1/plan`).

The body is that probe's targets, already expanded from the collector's plan.yaml (templates filled in
for its city, ISP and labels, overrides applied, every kind's settings complete), and a version: a hash
of exactly those targets. The version changes when, and only when, what this probe measures changes;
it is the response's ETag, the probe's `If-None-Match`, and what each result says it was measured under.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final

import msgspec

from .result import NAME_PATTERN
from .targets import TargetSpec

__all__ = ["PLAN_PATH", "PLAN_VERSION_PATTERN", "Plan", "plan_version", "encode_plan", "decode_plan"]

PLAN_PATH: Final = "/api/v1/plan"
PLAN_VERSION_PATTERN: Final = r"^[0-9a-f]{16}$(?!\n)"
#: the query parameters a probe identifies itself with, for a probe the registry knows no city of
PLAN_QUERY: Final = ("city", "isp", "label")


class Plan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One probe's plan: its id, the plan's version, and its targets."""

    probe_id: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
    version: Annotated[str, msgspec.Meta(pattern=PLAN_VERSION_PATTERN)]
    targets: list[TargetSpec]


_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder(Plan)


def plan_version(targets: list[TargetSpec]) -> str:
    """16 hex digits of the SHA-256 of the targets' canonical JSON (keys sorted)."""
    return hashlib.sha256(_encoder.encode(targets)).hexdigest()[:16]


def encode_plan(plan: Plan) -> bytes:
    return _encoder.encode(plan)


def decode_plan(body: bytes) -> Plan:
    """Parse a plan; raises msgspec.DecodeError (or ValidationError, with the `$.path` at fault)."""
    return _decoder.decode(body)
