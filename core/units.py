"""Readable units of config files: durations become seconds and sizes become bytes where they enter."""

from __future__ import annotations

import re

__all__ = ["Duration", "Size", "parse_duration", "parse_size"]


class Duration(float):
    """Seconds; written in config as `30s`, `500ms`, `2m`, `1h` or a bare number of seconds."""


class Size(int):
    """Bytes; written in config as `64MiB`, `1GB`, `512KiB` or a bare number of bytes."""


_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^(?P<number>\d+(\.\d*)?|\.\d+)\s*(?P<unit>us|µs|ms|s|m|h|d)?$")
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}  # fmt: skip


def parse_duration(value: object) -> Duration:
    """Seconds from `30s`, `500ms`, `2m`, `1h`, `1d` or a number; ValueError says what is accepted."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value.strip().lower())):
        seconds = float(match["number"]) * _DURATION_UNITS[match["unit"] or "s"]
    else:
        raise ValueError(f"expected a duration such as 30s or 500ms, got {value!r}")
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"a duration must be a finite number of seconds ≥ 0, got {value!r}")
    return Duration(seconds)


def parse_size(value: object) -> Size:
    """Bytes from `64MiB`, `1GB`, `512KiB` or a number; ValueError says what is accepted."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64MiB, got a boolean")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(digits):] or "b"
        if unit not in _SIZE_UNITS or not digits:
            raise ValueError(f"expected a size such as 64MiB or 1GB, got {value!r}")
        try:
            size = int(float(digits) * _SIZE_UNITS[unit])
        except ValueError:
            raise ValueError(f"expected a size such as 64MiB or 1GB, got {value!r}") from None
    else:
        raise ValueError(f"expected a size such as 64MiB, got {type(value).__name__}")
    if size < 0:
        raise ValueError(f"a size must be ≥ 0, got {value!r}")
    return Size(size)
