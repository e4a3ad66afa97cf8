"""Live progress of long tests (download, upload) for whoever wants to show it.

Measurement code never prints: it reports through the callback in `progress_callback`, a context
variable the CLI sets around `once` (the agent leaves it unset, so its tests report to nobody).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

__all__ = ["Progress", "ProgressCallback", "progress_callback", "report"]


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a test stands: its phase, seconds spent and planned in it, the latest rate (bit/s), bytes."""

    kind: str
    target: str
    phase: Literal["connect", "warmup", "window", "done"]
    elapsed_seconds: float
    planned_seconds: float
    rate_bits_per_second: float
    bytes_total: int


ProgressCallback = Callable[[Progress], None]

progress_callback: ContextVar[ProgressCallback | None] = ContextVar("progress_callback", default=None)


def report(update: Progress) -> None:
    """Hand `update` to the callback of the current context, if any."""
    callback = progress_callback.get()
    if callback is not None:
        callback(update)
