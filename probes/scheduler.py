"""Runs every (target, kind) job on its interval, at a stable per-probe phase, never overlapping itself.

Each job's tests start at wall-clock slots `k * interval + offset`, where the offset is a hash of the probe
id, target and kind: a thousand probes with the same config spread their tests across the interval
instead of hitting a target in the same second, and a restarted probe keeps its slots. A job runs its
tests one after another, so it cannot overlap itself; a test that overruns its slot skips the missed
slots. A semaphore bounds how many tests run at once across jobs.

An idle job is a timer, not a task: a task exists only while a test runs. A probe with a thousand
per-second targets thus holds a thousand timer handles (a few hundred bytes each) instead of a thousand
suspended coroutines, and each test costs one timer and one task. Starts are rounded up to a 5 ms grid
so that tests due together share one wake-up.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from qiancheng.core.clock import wall_ns
from qiancheng.core.kind_settings import KindSettings
from qiancheng.core.logs import kv
from qiancheng.core.result import Result, Target

from . import measure
from .config import Job

__all__ = ["Scheduler", "WAKEUP_GRID_SECONDS", "phase_offset", "seconds_until_slot"]

log = logging.getLogger("qiancheng.scheduler")

#: Tests due within the same few milliseconds start in one wake-up of the event loop: a thousand
#: per-second targets cost about 200 wake-ups a second instead of a thousand, each handling several
#: sends and then their replies together. Each start is at most this late; sends within one wake-up are
#: a handful of packets, far from filling a socket buffer.
WAKEUP_GRID_SECONDS = 0.005

MeasureFn = Callable[[str, Target, KindSettings], Awaitable[Result]]
SinkFn = Callable[[Job, Result], Awaitable[None]]


def phase_offset(probe_id: str, job: Job) -> float:
    """A stable offset within the job's interval, in seconds, spread uniformly across probes."""
    digest = hashlib.sha256(f"{probe_id}\0{job.target.name}\0{job.kind}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return fraction * float(job.settings.interval)


def seconds_until_slot(now: float, interval: float, offset: float) -> float:
    """Seconds from `now` (Unix seconds) to the next slot `k * interval + offset` strictly after it."""
    slot = (math.floor((now - offset) / interval) + 1) * interval + offset
    return slot - now


@dataclass
class _Runner:
    job: Job
    offset: float
    timer: asyncio.TimerHandle | None = None  # set while waiting for the next slot
    task: asyncio.Task[None] | None = None  # set while a test runs (or waits for a concurrency slot)
    retiring: bool = False
    tests: int = field(default=0)


class Scheduler:
    """Keeps one timer per job, and a task per running test; `apply()` swaps the job set in place (SIGHUP)."""

    def __init__(
        self,
        probe_id: str,
        sink: SinkFn,
        max_concurrency: int,
        measure_fn: MeasureFn = measure.run,
        now: Callable[[], float] = lambda: wall_ns() / 1e9,
    ) -> None:
        self._probe_id = probe_id
        self._sink = sink
        self._measure = measure_fn
        self._now = now
        self._slots = asyncio.Semaphore(max_concurrency)
        self._runners: dict[tuple[str, str], _Runner] = {}
        self.tests_run = 0

    @property
    def jobs(self) -> tuple[Job, ...]:
        return tuple(runner.job for runner in self._runners.values())

    def apply(self, jobs: Iterable[Job], probe_id: str | None = None) -> None:
        """Run exactly `jobs` from now on: unchanged jobs keep their task, changed ones restart.

        A job being removed while it measures finishes that test first, so its result is kept.
        """
        if probe_id is not None and probe_id != self._probe_id:
            self._probe_id = probe_id
            for runner in list(self._runners.values()):
                self._retire(runner)
            self._runners.clear()
        wanted = {job.key: job for job in jobs}
        for key, runner in list(self._runners.items()):
            if wanted.get(key) != runner.job:
                self._retire(runner)
                del self._runners[key]
        for key, job in wanted.items():
            if key in self._runners:
                # the same job (its plan version aside): later tests say they ran under the new plan
                self._runners[key].job = job
            else:
                runner = _Runner(job, phase_offset(self._probe_id, job))
                self._runners[key] = runner
                self._arm(runner)

    async def stop(self) -> None:
        """Cancel every job now, in-flight tests too (their results were not yet measured)."""
        runners = list(self._runners.values())
        self._runners.clear()
        tasks = []
        for runner in runners:
            runner.retiring = True
            if runner.timer is not None:
                runner.timer.cancel()
            if runner.task is not None:
                runner.task.cancel()
                tasks.append(runner.task)
        await asyncio.gather(*tasks, return_exceptions=True)

    def _retire(self, runner: _Runner) -> None:
        """No further tests; a test already running finishes, so its result is kept."""
        runner.retiring = True
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None

    def _arm(self, runner: _Runner) -> None:
        """Start the runner's next test at its next slot, rounded up to the wake-up grid."""
        loop = asyncio.get_running_loop()
        delay = seconds_until_slot(self._now(), float(runner.job.settings.interval), runner.offset)
        when = math.ceil((loop.time() + delay) / WAKEUP_GRID_SECONDS) * WAKEUP_GRID_SECONDS
        runner.timer = loop.call_at(when, self._start, runner)

    def _start(self, runner: _Runner) -> None:
        runner.timer = None
        if not runner.retiring:
            key = runner.job.key
            runner.task = asyncio.get_running_loop().create_task(self._test(runner), name=f"job {key[0]}/{key[1]}")

    async def _test(self, runner: _Runner) -> None:
        """One test: measure within the concurrency bound, hand the result to the sink, arm the next slot."""
        job = runner.job
        try:
            async with self._slots:
                result = await self._measure(job.kind, job.target, job.settings)
            # Shielded: once measured, a result reaches the spool even if we are cancelled now.
            await asyncio.shield(self._sink(job, result))
        except Exception as error:  # noqa: BLE001 - one job's trouble must not stop the others
            log.error(kv("job_error", target=job.target.name, kind=job.kind, error=repr(error)))
        finally:
            runner.task = None
        runner.tests += 1
        self.tests_run += 1
        if not runner.retiring:
            self._arm(runner)
