"""Scheduler wake-up grid: tests due within the same few milliseconds start together, never before their slot
and at most a grid step after it, and each job keeps its interval; an idle job holds a timer, not a task."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import defaultdict

import pytest

from qiancheng.core.kind_settings import IcmpSettings, KindSettings
from qiancheng.core.result import Result, Target
from qiancheng.probes.config import Job
from qiancheng.probes.scheduler import WAKEUP_GRID_SECONDS, Scheduler, phase_offset

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
