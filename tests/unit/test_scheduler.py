"""Scheduler: stable phases, no self-overlap, bounded concurrency, reload without losing a measured result."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics

import pytest

from qiancheng.core.kind_settings import IcmpSettings, KindSettings, TcpSettings
from qiancheng.core.result import Result, Target
from qiancheng.probes.config import Job
from qiancheng.probes.scheduler import Scheduler, phase_offset, seconds_until_slot


def job(name: str, interval: float = 0.05, kind: str = "icmp") -> Job:
    settings = IcmpSettings(interval=interval, count=1, timeout=0.01) if kind == "icmp" else TcpSettings(interval=interval, count=1, timeout=0.01)  # type: ignore[arg-type]
    return Job(target=Target(name=name, address="127.0.0.1"), kind=kind, settings=settings)


class Recorder:
    """A measure function that takes `duration` and records overlap and concurrency."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.running: dict[str, int] = {}
        self.peak_total = 0
        self.peak_per_job = 0
        self.started: list[tuple[str, float]] = []

    async def __call__(self, kind: str, target: Target, settings: KindSettings) -> Result:
        key = f"{target.name}/{kind}"
        self.running[key] = self.running.get(key, 0) + 1
        self.peak_per_job = max(self.peak_per_job, self.running[key])
        self.peak_total = max(self.peak_total, sum(self.running.values()))
        self.started.append((key, asyncio.get_running_loop().time()))
        try:
            await asyncio.sleep(self.duration)
        finally:
            self.running[key] -= 1
        return Result(kind=kind, target=target, start_ns=0, duration_seconds=self.duration, success=True)


def test_phase_offset_is_stable_and_spread() -> None:
    a = job("edge", interval=30)
    assert phase_offset("probe-1", a) == phase_offset("probe-1", a)
    offsets = [phase_offset(f"probe-{i}", a) for i in range(1000)]
    assert all(0 <= o < 30 for o in offsets)
    # a thousand probes spread over the interval: no second holds more than a few percent of them
    per_second = [sum(1 for o in offsets if s <= o < s + 1) for s in range(30)]
    assert max(per_second) < 70 and min(per_second) > 5
    assert abs(statistics.mean(offsets) - 15) < 1.5


@pytest.mark.parametrize(
    ("now", "interval", "offset", "expected"),
    [(100.0, 10.0, 3.0, 3.0), (103.0, 10.0, 3.0, 10.0), (103.5, 10.0, 3.0, 9.5), (0.0, 30.0, 0.0, 30.0)],
)
def test_seconds_until_slot(now: float, interval: float, offset: float, expected: float) -> None:
    assert seconds_until_slot(now, interval, offset) == pytest.approx(expected)


async def test_job_never_overlaps_itself_and_concurrency_is_bounded() -> None:
    recorder = Recorder(duration=0.12)  # longer than the 0.05 s interval
    results: list[Result] = []

    async def sink(_: Job, result: Result) -> None:
        results.append(result)

    scheduler = Scheduler("p1", sink, max_concurrency=2, measure_fn=recorder)
    scheduler.apply([job("a"), job("b"), job("c"), job("d")])
    await asyncio.sleep(0.6)
    await scheduler.stop()
    assert recorder.peak_per_job == 1
    assert recorder.peak_total == 2
    assert len(results) >= 4


async def test_interval_is_kept() -> None:
    recorder = Recorder(duration=0.0)

    async def sink(_: Job, result: Result) -> None:
        pass

    scheduler = Scheduler("p1", sink, max_concurrency=4, measure_fn=recorder)
    scheduler.apply([job("a", interval=0.1)])
    await asyncio.sleep(1.05)
    await scheduler.stop()
    times = [t for _, t in recorder.started]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert 8 <= len(times) <= 11
    assert statistics.median(gaps) == pytest.approx(0.1, abs=0.02)


async def test_apply_keeps_unchanged_jobs_and_finishes_removed_ones() -> None:
    recorder = Recorder(duration=0.2)
    results: list[Result] = []

    async def sink(_: Job, result: Result) -> None:
        results.append(result)

    scheduler = Scheduler("p1", sink, max_concurrency=8, measure_fn=recorder)
    keep, drop = job("keep", interval=1.0), job("drop", interval=0.3)
    scheduler.apply([keep, drop])
    # wait until `drop` is measuring, then remove it: its running test must still deliver a result
    for _ in range(200):
        if recorder.running.get("drop/icmp"):
            break
        await asyncio.sleep(0.01)
    assert recorder.running.get("drop/icmp") == 1
    task_before = scheduler._runners[keep.key].task
    scheduler.apply([keep, job("new", interval=1.0)])
    assert scheduler._runners[keep.key].task is task_before
    assert {j.target.name for j in scheduler.jobs} == {"keep", "new"}
    await asyncio.sleep(0.3)
    assert any(r.target.name == "drop" for r in results)
    await scheduler.stop()


async def test_failing_sink_does_not_stop_the_job() -> None:
    recorder = Recorder(duration=0.0)
    calls = 0

    async def sink(_: Job, result: Result) -> None:
        nonlocal calls
        calls += 1
        raise OSError("disk full")

    scheduler = Scheduler("p1", sink, max_concurrency=1, measure_fn=recorder)
    scheduler.apply([job("a", interval=0.05)])
    await asyncio.sleep(0.3)
    await scheduler.stop()
    assert calls >= 3


async def test_a_new_plan_version_alone_keeps_the_jobs_slot_and_later_tests_carry_it() -> None:
    recorder = Recorder(duration=0.03)
    carried: list[str] = []

    async def sink(job_run: Job, _: Result) -> None:
        carried.append(job_run.plan)

    scheduler = Scheduler("p1", sink, max_concurrency=4, measure_fn=recorder)
    old = dataclasses.replace(job("edge"), plan="v1")
    scheduler.apply([old])
    await asyncio.sleep(0.12)
    runner = scheduler._runners[old.key]
    scheduler.apply([dataclasses.replace(old, plan="v2")])
    assert scheduler._runners[old.key] is runner  # not restarted: same slots, the running test goes on
    await asyncio.sleep(0.15)
    await scheduler.stop()
    assert carried[0] == "v1" and carried[-1] == "v2"
    assert carried == sorted(carried)  # never v1 after v2
