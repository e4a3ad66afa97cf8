"""Measurement kinds: one module per kind, each with `async def measure(target, settings) -> Outcome`.

Adding a kind means adding its module and one row in the catalogue (qiancheng.core.kinds). Measurement code does no I/O besides
the measurement itself: no pushing, storing or logging of results. `run()` owns what is common to all
kinds: it stamps kind, target, start time and duration on what a kind found to make the result, keeps
an overall deadline, turns any unexpected exception into a failed result, so that nothing a target
does can stop the scheduler, and runs the exclusive kinds (download, upload) one at a time.

A kind may also offer `async def measure_group(tests) -> [(outcome or MeasurementError, ended)]` for tests
that start together (icmp does): `run_group()` then measures them in one coroutine, and each test still
gets the result `run()` would have given it, with its own duration.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import math
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from qiancheng.core.clock import monotonic, wall_ns
from qiancheng.core.errors import MeasurementError
from qiancheng.core.kind_settings import KindSettings
from qiancheng.core.kinds import EXCLUSIVE_KINDS, kind_named
from qiancheng.core.result import Result, Target, failure

from .outcome import Outcome

__all__ = ["MeasureFn", "MeasureGroupFn", "Outcome", "measure_fn", "measures_in_groups", "run", "run_group"]

MeasureFn = Callable[[Target, KindSettings], Awaitable[Outcome]]
#: a kind's entry point for tests starting together: per test, what it found (or why it failed) and the
#: monotonic time at which it ended
MeasureGroupFn = Callable[[Sequence[tuple[Target, KindSettings]]], Awaitable[list[tuple[Outcome | MeasurementError, float]]]]

# one lock per event loop (asyncio locks are bound to the loop they are first used in)
_exclusive_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

# Slack beyond a kind's own longest duration before run() gives up on it.
_DEADLINE_GRACE_SECONDS = 2.0


def measure_fn(kind: str) -> MeasureFn:
    """The entry point of `kind`; KeyError if no module serves it."""
    module = importlib.import_module(kind_named(kind).module)
    return cast(MeasureFn, module.measure)


@functools.lru_cache(maxsize=None)
def _group_fn(kind: str) -> MeasureGroupFn | None:
    if kind in EXCLUSIVE_KINDS:
        return None
    module = importlib.import_module(kind_named(kind).module)
    return cast("MeasureGroupFn | None", getattr(module, "measure_group", None))


def measures_in_groups(kind: str) -> bool:
    """True if tests of `kind` starting together can be measured by one `run_group()`."""
    try:
        return _group_fn(kind) is not None
    except (KeyError, ImportError):
        return False


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
    return _result(kind, target, start_ns, monotonic() - started, outcome)


async def run_group(kind: str, tests: Sequence[tuple[Target, KindSettings]]) -> list[Result]:
    """Measure tests of a kind with `measure_group` together; a result for each, as `run()` would give it."""
    group_fn = _group_fn(kind)
    assert group_fn is not None, f"{kind} is not measured in groups"
    start_ns, started = wall_ns(), monotonic()

    def failed(reason: str, detail: str) -> list[Result]:
        return [failure(kind, target, start_ns, monotonic() - started, reason, detail) for target, _ in tests]

    try:
        deadline = max(settings.max_duration() for _, settings in tests) + _DEADLINE_GRACE_SECONDS
        async with asyncio.timeout(deadline):
            found = await group_fn(tests)
    except MeasurementError as error:
        return failed(error.reason, error.detail)
    except (asyncio.TimeoutError, TimeoutError):
        return failed("timeout", "overall deadline passed")
    except PermissionError as error:
        return failed("permission", str(error))
    except Exception as error:  # noqa: BLE001 - a target must never stop the scheduler
        return failed("error", f"{type(error).__name__}: {error}")
    results = []
    for (target, _), (outcome, ended) in zip(tests, found):
        if isinstance(outcome, MeasurementError):
            results.append(failure(kind, target, start_ns, ended - started, outcome.reason, outcome.detail))
        else:
            results.append(_result(kind, target, start_ns, ended - started, outcome))
    return results


def _result(kind: str, target: Target, start_ns: int, duration: float, outcome: Outcome) -> Result:
    """The result of a test that ran to its end: what it found, stamped with kind, target and times."""
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
