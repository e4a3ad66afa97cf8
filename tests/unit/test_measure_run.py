"""measure.run(): whatever a kind does, the scheduler gets a result, with a reason when it failed."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from qiancheng.core.errors import MeasurementError
from qiancheng.core.kind_settings import KindSettings
from qiancheng.core.result import Target
from qiancheng.core.units import Duration
from qiancheng.probes import measure
from qiancheng.probes.measure import Outcome

TARGET = Target(name="t", address="127.0.0.1")
SETTINGS = KindSettings(timeout=Duration(0.05))  # max_duration 0.05 s, + the 2 s grace


def _use(monkeypatch: pytest.MonkeyPatch, behaviour: object) -> None:
    async def fake(target: Target, settings: KindSettings) -> Outcome:
        if isinstance(behaviour, BaseException):
            raise behaviour
        if behaviour == "hang":
            await asyncio.sleep(60)
        return Outcome(figures={"loss_ratio": 0.0, "rtt_mean_seconds": behaviour})  # type: ignore[dict-item]

    monkeypatch.setattr(measure, "measure_fn", lambda kind: fake)


async def test_a_good_result_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, 0.001)
    result = await measure.run("tcp", TARGET, SETTINGS)
    assert result.success and result.figures["rtt_mean_seconds"] == 0.001


@pytest.mark.parametrize(
    ("behaviour", "reason", "detail"),
    [
        (MeasurementError("refused", "port closed"), "refused", "port closed"),
        (PermissionError("no raw socket"), "permission", "no raw socket"),
        (ValueError("bug"), "error", "ValueError: bug"),
        (math.nan, "error", "non-finite figures: rtt_mean_seconds"),
        (math.inf, "error", "non-finite figures: rtt_mean_seconds"),
    ],
)
async def test_a_failure_is_a_result_with_a_reason(
    monkeypatch: pytest.MonkeyPatch, behaviour: object, reason: str, detail: str
) -> None:
    _use(monkeypatch, behaviour)
    result = await measure.run("tcp", TARGET, SETTINGS)
    assert (result.success, result.error, result.detail) == (False, reason, detail)
    assert result.kind == "tcp" and result.target == TARGET


async def test_a_kind_that_hangs_is_cut_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, "hang")
    result = await measure.run("tcp", TARGET, SETTINGS)
    assert (result.success, result.error) == (False, "timeout")
    assert 2.0 <= result.duration_seconds < 3.0


async def test_exclusive_kinds_run_one_at_a_time_and_wait_outside_their_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    running: set[str] = set()
    overlaps: list[set[str]] = []

    async def fake(target: Target, settings: KindSettings) -> Outcome:
        running.add(target.name)
        overlaps.append(set(running))
        await asyncio.sleep(0.1)
        running.discard(target.name)
        return Outcome()

    monkeypatch.setattr(measure, "measure_fn", lambda kind: fake)
    # each test may take 0.1 + 0.05 s; the third exclusive one waits 0.2 s first, which must not count
    monkeypatch.setattr(measure, "_DEADLINE_GRACE_SECONDS", 0.05)
    settings = KindSettings(timeout=Duration(0.1))
    jobs = [("download", "d1"), ("upload", "u1"), ("download", "d2"), ("icmp", "i1")]
    results = await asyncio.gather(*(measure.run(k, Target(name=n, address="127.0.0.1"), settings) for k, n in jobs))
    assert all(r.success for r in results), [r.detail for r in results]
    exclusive = {"d1", "u1", "d2"}
    assert all(len(seen & exclusive) <= 1 for seen in overlaps), overlaps
    # other kinds are not held back: the icmp test ran beside the first exclusive one
    assert any({"i1"} < seen for seen in overlaps), overlaps


async def test_run_stamps_kind_target_and_times_on_what_the_kind_found(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake(target: Target, settings: KindSettings) -> Outcome:
        await asyncio.sleep(0.02)
        return Outcome(figures={"loss_ratio": 1.0}, info={"address": "127.0.0.1"}, samples=[None],
                       error="loss", detail="x" * 2000)  # fmt: skip

    monkeypatch.setattr(measure, "measure_fn", lambda kind: fake)
    before = time.time_ns()
    result = await measure.run("icmp", TARGET, SETTINGS)
    assert (result.kind, result.target, result.success, result.error) == ("icmp", TARGET, False, "loss")
    assert before <= result.start_ns <= before + 10_000_000 and 0.02 <= result.duration_seconds < 1.0
    assert (result.figures, result.info, result.samples) == ({"loss_ratio": 1.0}, {"address": "127.0.0.1"}, [None])
    assert result.detail == "x" * 1024
