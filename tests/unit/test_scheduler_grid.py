"""Scheduler wake-up grid: tests due within the same few milliseconds start together, never before their slot
and at most a grid step after it, and each job keeps its interval; an idle job waits in a tick's timer, not a
task; tests of a grouped kind due at one tick with the same settings are measured as one group."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence

import pytest

from qiancheng.core.kind_settings import IcmpSettings, KindSettings
from qiancheng.core.result import Result, Target
from qiancheng.probes.config import Job
from qiancheng.probes.scheduler import WAKEUP_GRID_SECONDS, Scheduler, _Slots, phase_offset

INTERVAL = 0.2


def job(name: str) -> Job:
    return Job(target=Target(name=name, address="127.0.0.1"), kind="icmp",
               settings=IcmpSettings(interval=INTERVAL, count=1, timeout=0.01))  # type: ignore[arg-type]


async def test_starts_share_wakeups_on_the_grid_never_early_and_keep_each_interval() -> None:
    loop = asyncio.get_running_loop()
    jobs = {f"t{i}": job(f"t{i}") for i in range(200)}
    loop_times: dict[str, list[float]] = defaultdict(list)
    lateness: list[float] = []  # seconds after the job's slot, by the wall clock the scheduler plans with

    async def measure(kind: str, target: Target, settings: KindSettings) -> Result:
        loop_times[target.name].append(loop.time())
        offset = phase_offset("grid-probe", jobs[target.name])
        lateness.append((time.time() - offset) % INTERVAL)
        return Result(kind=kind, target=target, start_ns=0, duration_seconds=0.0, success=True)

    async def sink(_: Job, result: Result) -> None:
        pass

    scheduler = Scheduler("grid-probe", sink, max_concurrency=64, measure_fn=measure, now=time.time)
    scheduler.apply(jobs.values())
    assert all(runner.task is None and runner.timer is not None for runner in scheduler._runners.values())
    await asyncio.sleep(1.0)
    await scheduler.stop()

    starts = [t for times in loop_times.values() for t in times]
    assert len(loop_times) == 200 and len(starts) >= 800
    # never before the slot, and late by at most one grid step plus the loop's own delay
    assert all(late < WAKEUP_GRID_SECONDS + 0.02 for late in lateness), max(lateness)
    assert statistics.median(lateness) < WAKEUP_GRID_SECONDS + 0.002
    # starts fall on the grid, so those due together share one wake-up
    wakeups = {round(t / WAKEUP_GRID_SECONDS) for t in starts}
    assert len(wakeups) <= len(starts) / 4
    # every job still runs once per interval
    gaps = [b - a for times in loop_times.values() for a, b in zip(times, times[1:])]
    assert statistics.median(gaps) == pytest.approx(INTERVAL, abs=WAKEUP_GRID_SECONDS)


def _grouped_jobs() -> list[Job]:
    one = IcmpSettings(interval=INTERVAL, count=1, timeout=0.01)  # type: ignore[arg-type]
    two = IcmpSettings(interval=INTERVAL, count=2, timeout=0.01)  # type: ignore[arg-type]
    return [Job(target=Target(name=f"{label}{i}", address="127.0.0.1"), kind="icmp", settings=settings)
            for label, settings in (("a", one), ("b", two)) for i in range(100)]  # fmt: skip


async def test_jobs_due_at_one_tick_with_the_same_settings_are_measured_as_one_group() -> None:
    groups: list[list[tuple[Target, KindSettings]]] = []
    delivered: list[str] = []
    alone: list[str] = []

    async def measure_alone(kind: str, target: Target, settings: KindSettings) -> Result:
        alone.append(target.name)  # a kind measured in groups is never measured alone while slots are free
        return Result(kind=kind, target=target, start_ns=0, duration_seconds=0.0, success=True)

    async def measure_group(kind: str, tests: Sequence[tuple[Target, KindSettings]]) -> list[Result]:
        groups.append(list(tests))
        return [Result(kind=kind, target=target, start_ns=0, duration_seconds=0.0, success=True) for target, _ in tests]

    async def sink(_: Job, result: Result) -> None:
        delivered.append(result.target.name)

    scheduler = Scheduler("grid-probe", sink, max_concurrency=256, measure_fn=measure_alone, now=time.time,
                          measure_group_fn=measure_group, groups=lambda kind: kind == "icmp")  # fmt: skip
    scheduler.apply(_grouped_jobs())
    # idle jobs wait in ticks: fewer timers than jobs, each job holding its tick's
    timers = {id(runner.timer) for runner in scheduler._runners.values()}
    assert all(runner.timer is not None for runner in scheduler._runners.values()) and len(timers) < 200
    await asyncio.sleep(1.0)
    await scheduler.stop()

    assert all(len({settings for _, settings in tests}) == 1 for tests in groups)  # one settings per group
    assert max(len(tests) for tests in groups) > 1 and len(groups) < sum(len(tests) for tests in groups) / 2
    measured = [target.name for tests in groups for target, _ in tests]
    assert {name for name in measured} == {job.target.name for job in _grouped_jobs()}
    assert set(delivered) == set(measured) and len(delivered) <= len(measured)  # results reached the sink, once each
    assert alone == [] and scheduler.tests_run > len(_grouped_jobs())


async def test_a_group_sink_takes_each_groups_results_at_once() -> None:
    calls: list[list[str]] = []

    async def measure_group(kind: str, tests: Sequence[tuple[Target, KindSettings]]) -> list[Result]:
        return [Result(kind=kind, target=target, start_ns=0, duration_seconds=0.0, success=True) for target, _ in tests]

    async def sink(_: Job, result: Result) -> None:
        raise AssertionError("the group sink takes them")

    async def sink_group(measured: Sequence[tuple[Job, Result]]) -> None:
        assert all(job.target == result.target for job, result in measured)
        calls.append([job.target.name for job, _ in measured])

    scheduler = Scheduler("grid-probe", sink, max_concurrency=256, now=time.time, measure_group_fn=measure_group,
                          groups=lambda kind: True, sink_group=sink_group)  # fmt: skip
    scheduler.apply(_grouped_jobs())
    await asyncio.sleep(0.5)
    await scheduler.stop()
    assert calls and max(len(names) for names in calls) > 1
    assert {name for names in calls for name in names} == {job.target.name for job in _grouped_jobs()}


async def test_a_group_takes_all_its_slots_at_once_or_waits_behind_others() -> None:
    slots = _Slots(3)
    assert slots.try_take(2) and not slots.try_take(2)  # all or none
    assert slots.try_take(1) and slots.taken == 3
    waiter = asyncio.ensure_future(slots.take())
    await asyncio.sleep(0)
    assert not slots.try_take(0 + 1) and not waiter.done()
    slots.give(2)  # one slot goes straight to the waiter, the other is free
    await asyncio.sleep(0)
    assert waiter.done() and slots.taken == 2
    assert not slots.try_take(2) and slots.try_take(1)
    cancelled = asyncio.ensure_future(slots.take())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    slots.give(3)
    assert slots.taken == 0 and slots.try_take(3)  # the cancelled waiter took nothing
