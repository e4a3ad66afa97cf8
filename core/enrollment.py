"""Enrollment on the wire: a box trades a one-time code for its probe id and token (`POST /api/v1/enroll`)."""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from .result import NAME_PATTERN

__all__ = ["ENROLL_PATH", "EnrollRequest", "Enrolled"]

ENROLL_PATH: Final = "/api/v1/enroll"


class EnrollRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The code `qiancheng-collector enroll` printed (case, dashes and spaces do not matter)."""

    code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class Enrolled(msgspec.Struct, frozen=True):
    """Who the box now is, and its bearer token (shown this once; the collector keeps only its hash)."""

    probe_id: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
    city: str
    isp: str
    token: str
