"""Measurement kinds: one module per kind, each with `async def measure(target, settings) -> Outcome`.

Adding a kind means adding its module and one row in the catalogue (qiancheng.core.kinds). Measurement code does no I/O besides
the measurement itself: no pushing, storing or logging of results. `run()` owns what is common to all
kinds: it stamps kind, target, start time and duration on what a kind found to make the result, keeps
an overall deadline, turns any unexpected exception into a failed result, so that nothing a target
does can stop the scheduler, and runs the exclusive kinds (download, upload) one at a time.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import weakref
from collections.abc import Awaitable, Callable
from typing import cast

from qiancheng.core.clock import monotonic, wall_ns
from qiancheng.core.errors import MeasurementError
from qiancheng.core.kind_settings import KindSettings
from qiancheng.core.kinds import EXCLUSIVE_KINDS, kind_named
from qiancheng.core.result import Result, Target, failure

from .outcome import Outcome

__all__ = ["MeasureFn", "Outcome", "measure_fn", "run"]

MeasureFn = Callable[[Target, KindSettings], Awaitable[Outcome]]

# one lock per event loop (asyncio locks are bound to the loop they are first used in)
_exclusive_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

# Slack beyond a kind's own longest duration before run() gives up on it.
_DEADLINE_GRACE_SECONDS = 2.0


def measure_fn(kind: str) -> MeasureFn:
    """The entry point of `kind`; KeyError if no module serves it."""
    module = importlib.import_module(kind_named(kind).module)
    return cast(MeasureFn, module.measure)


async def run(kind: str, target: Target, settings: KindSettings) -> Result:
    """Measure once; always returns a result, a failed one with a reason if anything went wrong."""
    # Exclusive kinds fill the access link; the others wait for the lock outside their own deadline.
    if kind in EXCLUSIVE_KINDS:
        lock = _exclusive_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with lock:
            return await _run(kind, target, settings)
    return await _run(kind, target, settings)


async def _run(kind: str, target: Target, settings: KindSettings) -> Result:
    start_ns, started = wall_ns(), monotonic()
    try:
        function = measure_fn(kind)
        # a timeout scope, not wait_for: on 3.11 wait_for wraps every test in a task of its own
        async with asyncio.timeout(settings.max_duration() + _DEADLINE_GRACE_SECONDS):
            outcome = await function(target, settings)
    except MeasurementError as error:
        return failure(kind, target, start_ns, monotonic() - started, error.reason, error.detail)
    except (asyncio.TimeoutError, TimeoutError):
        return failure(kind, target, start_ns, monotonic() - started, "timeout", "overall deadline passed")
    except PermissionError as error:
        return failure(kind, target, start_ns, monotonic() - started, "permission", str(error))
    except Exception as error:  # noqa: BLE001 - a target must never stop the scheduler
        return failure(kind, target, start_ns, monotonic() - started, "error", f"{type(error).__name__}: {error}")
    duration = monotonic() - started
    # JSON has no NaN or infinity: such a figure would travel as null and be refused by the collector.
    if bad := sorted(name for name, value in outcome.figures.items() if not math.isfinite(value)):
        return failure(kind, target, start_ns, duration, "error", f"non-finite figures: {', '.join(bad)}")
    return Result(
        kind=kind,
        target=target,
        start_ns=start_ns,
        duration_seconds=max(0.0, duration),
        success=outcome.success,
        error=outcome.error,
        detail=outcome.detail[:1024] if outcome.detail else None,
        figures=outcome.figures,
        info=outcome.info,
        samples=outcome.samples,
        hops=outcome.hops,
    )
