"""Live progress of long tests (download, upload; a traced path round by round) for whoever shows it.

Measurement code never prints: it reports through the callbacks in `progress_callback` and
`path_progress_callback`, context variables the CLI sets around `once` (the agent leaves them unset,
so its tests report to nobody).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from qiancheng.core.result import Hop, Target

__all__ = ["PathProgress", "Progress", "ProgressCallback", "path_progress_callback", "progress_callback", "report",
           "report_path"]


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


@dataclass(frozen=True, slots=True)
class PathProgress:
    """A path trace after `rounds_done` of its `rounds`: the hops found so far."""

    target: Target
    hops: list[Hop]
    rounds_done: int
    rounds: int


path_progress_callback: ContextVar[Callable[[PathProgress], None] | None] = ContextVar("path_progress_callback", default=None)


def report_path(target: Target, hops: Callable[[], list[Hop]], rounds_done: int, rounds: int) -> None:
    """Hand the trace's hops so far to the path callback of the current context, if any (`hops` is
    called only then: the agent's traces do not aggregate for nobody)."""
    callback = path_progress_callback.get()
    if callback is not None:
        callback(PathProgress(target, hops(), rounds_done, rounds))
