"""Runs every (target, kind) job on its interval, at a stable per-probe phase, never overlapping itself.

Each job's tests start at wall-clock slots `k * interval + offset`, where the offset is a hash of the probe
id, target and kind: a thousand probes with the same config spread their tests across the interval
instead of hitting a target in the same second, and a restarted probe keeps its slots. A job runs its
tests one after another, so it cannot overlap itself; a test that overruns its slot skips the missed
slots. `max_concurrency` bounds how many tests run at once across jobs.

An idle job waits in a tick of the wake-up grid, not in a task: starts are rounded up to a 5 ms grid and
the jobs due at one tick share its one timer, so a probe with a thousand per-second targets holds about
two hundred timers rather than a thousand suspended coroutines. At its tick, the tests of a kind that
measures in groups (icmp) with the same settings start as one group: one task, one deadline and one
pass of sends for all of them, each still getting its own result (`measure.run_group`). Other kinds, and
a group that would find too few free slots, start a task per test as before.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from qiancheng.core.clock import wall_ns
from qiancheng.core.kind_settings import KindSettings
from qiancheng.core.logs import kv
from qiancheng.core.result import Result, Target

from . import measure
from .config import Job

__all__ = ["Scheduler", "SinkGroupFn", "WAKEUP_GRID_SECONDS", "phase_offset", "seconds_until_slot"]

log = logging.getLogger("qiancheng.scheduler")

#: Tests due within the same few milliseconds start in one wake-up of the event loop: a thousand
#: per-second targets cost about 200 wake-ups a second instead of a thousand, each handling several
#: sends and then their replies together. Each start is at most this late; sends within one wake-up are
#: a handful of packets, far from filling a socket buffer.
WAKEUP_GRID_SECONDS = 0.005

MeasureFn = Callable[[str, Target, KindSettings], Awaitable[Result]]
MeasureGroupFn = Callable[[str, Sequence[tuple[Target, KindSettings]]], Awaitable[list[Result]]]
SinkFn = Callable[[Job, Result], Awaitable[None]]
#: takes the results of a group at once; each must count as measured (spooled) when it returns
SinkGroupFn = Callable[[Sequence[tuple[Job, Result]]], Awaitable[None]]


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
    timer: asyncio.TimerHandle | None = None  # the timer of the tick it waits for (shared with other jobs)
    task: asyncio.Task[None] | None = None  # set while a test runs (or waits for a concurrency slot)
    retiring: bool = False
    tests: int = field(default=0)
    group: int | None = None  # jobs of one group number start together; None: each alone


@dataclass
class _Tick:
    """One point of the wake-up grid: its timer, and the jobs whose next test starts there."""

    timer: asyncio.TimerHandle
    runners: list[_Runner] = field(default_factory=list)


class _Slots:
    """Counts the tests running against the concurrency bound, first come first served.

    A group takes all its slots at once or none: two groups each holding part of what they need could
    otherwise wait for each other forever.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_take(self, count: int) -> bool:
        """Take `count` slots if they are free now and nobody waits for one; else take none."""
        while self._waiters and self._waiters[0].done():  # cancelled waiters
            self._waiters.popleft()
        if self._waiters or self.taken + count > self.limit:
            return False
        self.taken += count
        return True

    async def take(self) -> None:
        """One slot, waiting in line for it if none is free."""
        if self.try_take(1):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot just as we were cancelled: pass it on
                self.give()
            raise

    def give(self, count: int = 1) -> None:
        """Return slots; each goes straight to the next waiter in line."""
        self.taken -= count
        while self._waiters and self.taken < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.taken += 1
                waiter.set_result(None)


class Scheduler:
    """Keeps the jobs in ticks of the wake-up grid, and a task per running test or group of tests;
    `apply()` swaps the job set in place (SIGHUP)."""

    def __init__(
        self,
        probe_id: str,
        sink: SinkFn,
        max_concurrency: int,
        measure_fn: MeasureFn = measure.run,
        now: Callable[[], float] = lambda: wall_ns() / 1e9,
        *,
        measure_group_fn: MeasureGroupFn | None = None,
        groups: Callable[[str], bool] = measure.measures_in_groups,
        sink_group: SinkGroupFn | None = None,
    ) -> None:
        """`measure_group_fn` measures tests of the kinds `groups` names together; by default
        `measure.run_group` when `measure_fn` is `measure.run`, else none (a stand-in measures each test
        alone). `sink_group`, if given, takes a group's results in one call instead of `sink` for each."""
        self._probe_id = probe_id
        self._sink = sink
        self._sink_group = sink_group
        self._measure = measure_fn
        if measure_group_fn is None and measure_fn is measure.run:
            measure_group_fn = measure.run_group
        self._measure_group = measure_group_fn
        self._groups = groups
        self._now = now
        self._slots = _Slots(max_concurrency)
        self._runners: dict[tuple[str, str], _Runner] = {}
        self._ticks: dict[int, _Tick] = {}  # by tick number: loop time / WAKEUP_GRID_SECONDS
        # a number per (kind, settings) measured in groups: found once per job, not hashed at every tick
        self._group_numbers: dict[tuple[str, KindSettings], int] = {}
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
                runner = _Runner(job, phase_offset(self._probe_id, job), group=self._group_number(job))
                self._runners[key] = runner
                self._arm(runner)

    def _group_number(self, job: Job) -> int | None:
        """The group the job's tests start in with others due at the same tick, or None to start alone."""
        if self._measure_group is None or not self._groups(job.kind):
            return None
        return self._group_numbers.setdefault((job.kind, job.settings), len(self._group_numbers))

    async def stop(self) -> None:
        """Cancel every job now, in-flight tests too (their results were not yet measured)."""
        runners = list(self._runners.values())
        self._runners.clear()
        for tick in self._ticks.values():
            tick.timer.cancel()
        self._ticks.clear()
        tasks = set()
        for runner in runners:
            runner.retiring = True
            runner.timer = None
            if runner.task is not None:
                runner.task.cancel()
                tasks.add(runner.task)
        await asyncio.gather(*tasks, return_exceptions=True)

    def _retire(self, runner: _Runner) -> None:
        """No further tests; a test already running finishes, so its result is kept."""
        runner.retiring = True
        runner.timer = None  # its tick passes it over; the tick's timer is other jobs' too

    def _arm(self, runner: _Runner) -> None:
        """Start the runner's next test at its next slot, rounded up to the wake-up grid."""
        loop = asyncio.get_running_loop()
        delay = seconds_until_slot(self._now(), float(runner.job.settings.interval), runner.offset)
        number = math.ceil((loop.time() + delay) / WAKEUP_GRID_SECONDS)
        tick = self._ticks.get(number)
        if tick is None:
            tick = self._ticks[number] = _Tick(loop.call_at(number * WAKEUP_GRID_SECONDS, self._start_tick, number))
        tick.runners.append(runner)
        runner.timer = tick.timer

    def _start_tick(self, number: int) -> None:
        """The tests due at this tick: a group per kind and settings where the kind allows, else one each."""
        tick = self._ticks.pop(number)
        groups: dict[int, list[_Runner]] = {}
        for runner in tick.runners:
            if runner.retiring or runner.timer is not tick.timer:
                continue
            runner.timer = None
            if runner.group is None:
                self._start_test(runner)
            else:
                groups.setdefault(runner.group, []).append(runner)
        for runners in groups.values():
            kind = runners[0].job.kind
            if self._slots.try_take(len(runners)):
                task = asyncio.get_running_loop().create_task(self._test_group(kind, runners), name=f"{kind} group")
                for runner in runners:
                    runner.task = task
            else:  # too few free slots for all: each waits for its own, as any test does
                for runner in runners:
                    self._start_test(runner)

    def _start_test(self, runner: _Runner) -> None:
        key = runner.job.key
        runner.task = asyncio.get_running_loop().create_task(self._test(runner), name=f"job {key[0]}/{key[1]}")

    async def _test(self, runner: _Runner) -> None:
        """One test: measure within the concurrency bound, hand the result to the sink, arm the next slot."""
        job = runner.job
        try:
            await self._slots.take()
            try:
                result = await self._measure(job.kind, job.target, job.settings)
            finally:
                self._slots.give()
            # Shielded: once measured, a result reaches the spool even if we are cancelled now.
            await asyncio.shield(self._sink(job, result))
        except Exception as error:  # noqa: BLE001 - one job's trouble must not stop the others
            log.error(kv("job_error", target=job.target.name, kind=job.kind, error=repr(error)))
        finally:
            runner.task = None
        self._done(runner)

    async def _test_group(self, kind: str, runners: list[_Runner]) -> None:
        """Tests started together, their slots already taken: measure them as one, then as `_test` does."""
        assert self._measure_group is not None
        jobs = [runner.job for runner in runners]
        try:
            try:
                results = await self._measure_group(kind, [(job.target, job.settings) for job in jobs])
            finally:
                self._slots.give(len(runners))
            # Shielded: once measured, the results reach the spool even if we are cancelled now.
            await asyncio.shield(self._deliver(list(zip(jobs, results))))
        except Exception as error:  # noqa: BLE001 - one group's trouble must not stop the others
            for job in jobs:
                log.error(kv("job_error", target=job.target.name, kind=job.kind, error=repr(error)))
        finally:
            for runner in runners:
                runner.task = None
        for runner in runners:
            self._done(runner)

    async def _deliver(self, measured: list[tuple[Job, Result]]) -> None:
        """Hand a group's results to the sink; one job's sink error is logged for that job alone."""
        if self._sink_group is not None:
            await self._sink_group(measured)
            return
        outcomes = await asyncio.gather(*(self._sink(job, result) for job, result in measured), return_exceptions=True)
        for (job, _), outcome in zip(measured, outcomes):
            if isinstance(outcome, Exception):
                log.error(kv("job_error", target=job.target.name, kind=job.kind, error=repr(outcome)))
            elif isinstance(outcome, BaseException):
                raise outcome

    def _done(self, runner: _Runner) -> None:
        runner.tests += 1
        self.tests_run += 1
        if not runner.retiring:
            self._arm(runner)
