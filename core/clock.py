"""The one clock helper: monotonic time for intervals, UTC wall clock in ns for timestamps."""

from __future__ import annotations

import time

__all__ = ["monotonic", "wall_ns"]


def monotonic() -> float:
    """Seconds on a clock that never jumps; only differences mean anything."""
    return time.monotonic()


def monotonic_ns() -> int:
    """Nanoseconds on a clock that never jumps; only differences mean anything."""
    return time.monotonic_ns()


def wall_ns() -> int:
    """Now as UTC nanoseconds since the Unix epoch (the clock SO_TIMESTAMPNS also uses)."""
    return time.time_ns()
