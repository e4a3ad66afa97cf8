"""Logs for operators: one line per event, `event key=value ...`, to stderr; never secrets."""

from __future__ import annotations

import logging
import sys

__all__ = ["setup", "kv"]


def kv(event: str, **fields: object) -> str:
    """`event key=value ...` with values quoted when they hold spaces."""
    parts = [event]
    for key, value in fields.items():
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        if not text or any(c in text for c in ' ="'):
            text = '"' + text.replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def setup(level: str = "info") -> None:
    """Log to stderr as `time level logger: event key=value`."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
