"""One judgement pass over every series, and the periodic task that runs it.

A pass reads the results inside the longest window for each series from a `WindowSource` (the
SQLite store, or the window cache; one indexed range scan each), computes every objective's indicator over each window, and steps the breach
state with the verdict of the first (judging) window. The outcome is kept as a list of `Judgement`s
for /metrics and GET /api/v1/sla.

A window that starts before the reader's data is complete (a new SLA window cache, `cache`) has no
value: its indicator over part of the window could pass or breach wrongly, so it is no data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from qiancheng.core.logs import kv

from ..records import SeriesKey, WindowRow
from ..store import StoreError, WindowSource
from .breach import BreachState, step
from .profiles import Objective, Profile, SlaProfiles

__all__ = ["WindowValue", "Judgement", "Judge", "window_name"]

log = logging.getLogger("qiancheng.collector.sla")


def window_name(seconds: float) -> str:
    """`5m`, `1h`, `90s`: the `window` label of a window length in seconds."""
    whole = round(seconds)
    if whole and whole % 3600 == 0:
        return f"{whole // 3600}h"
    if whole and whole % 60 == 0:
        return f"{whole // 60}m"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class WindowValue:
    """An indicator over one window: its value in base units (None: no data) and the results it read."""

    seconds: float
    value: float | None
    results: int


@dataclass(frozen=True, slots=True)
class Judgement:
    """Where one objective of one profile stands for one series."""

    series: SeriesKey
    profile: Profile
    objective: Objective
    windows: tuple[WindowValue, ...]
    state: BreachState


_UnitKey = tuple[SeriesKey, str, str]  # series, profile, objective


class Judge:
    """Judges every series against the profiles that apply to it; keeps breach state between passes."""

    def __init__(self, profiles: SlaProfiles, windows: Sequence[float], open_after: int, close_after: int) -> None:
        if not windows:
            raise ValueError("at least one window")
        self.profiles = profiles
        self.windows = tuple(float(w) for w in windows)
        self.open_after = open_after
        self.close_after = close_after
        self.judgements: list[Judgement] = []
        self.judged_ns = 0  # when the latest pass ran (UTC ns), 0 before the first
        self.pass_seconds = 0.0  # how long the latest pass took, reading included
        self._states: dict[_UnitKey, BreachState] = {}

    @property
    def horizon_seconds(self) -> float:
        return max(self.windows)

    def judge(
        self, data: Iterable[tuple[SeriesKey, Sequence[WindowRow]]], now_ns: int, complete_since_ns: int = 0
    ) -> list[Judgement]:
        """One pass over `data` (each series with its rows oldest first, covering the longest window);
        windows starting before `complete_since_ns` have no value."""
        targets: dict[tuple[str, str], list[tuple[SeriesKey, Sequence[WindowRow]]]] = {}
        for key, rows in data:
            targets.setdefault((key.probe, key.target), []).append((key, rows))
        judgements: list[Judgement] = []
        states: dict[_UnitKey, BreachState] = {}
        for series in targets.values():
            first = series[0][0]
            labels = first.labels()
            for profile in self.profiles.for_series(labels):
                for objective in profile.objectives:
                    for key, rows in self._units(series, objective):
                        judgement = self._judge_unit(key, rows, profile, objective, now_ns, complete_since_ns)
                        states[(key, profile.name, objective.name)] = judgement.state
                        judgements.append(judgement)
        self._states = states  # units whose series left the horizon are forgotten
        self.judgements = judgements
        self.judged_ns = now_ns
        return judgements

    @staticmethod
    def _units(
        series: list[tuple[SeriesKey, Sequence[WindowRow]]], objective: Objective
    ) -> list[tuple[SeriesKey, Sequence[WindowRow]]]:
        """The series of one target that an objective reads; one empty series (no data) if none is measured."""
        kinds = objective.indicator.kinds
        units = [(key, rows) for key, rows in series if kinds is None or key.kind in kinds]
        if units:
            return units
        first = series[0][0]
        # say which kind would be needed when there is exactly one (download, upload)
        kind = kinds[0] if kinds is not None and len(kinds) == 1 else ""
        return [(SeriesKey(first.probe, first.city, first.isp, first.target, first.target_class, kind), ())]

    def _judge_unit(
        self, key: SeriesKey, rows: Sequence[WindowRow], profile: Profile, objective: Objective, now_ns: int,
        complete_since_ns: int,
    ) -> Judgement:  # fmt: skip
        starts = [row.start_ns for row in rows]
        values = []
        for seconds in self.windows:
            begin = now_ns - int(seconds * 1e9)
            inside = rows[bisect_left(starts, begin) :]
            value = objective.indicator.compute(inside) if begin >= complete_since_ns else None
            values.append(WindowValue(seconds, value, len(inside)))
        judged = values[0].value
        verdict = None if judged is None else objective.met(judged)
        previous = self._states.get((key, profile.name, objective.name))
        state = step(previous, verdict, now_ns, self.open_after, self.close_after)
        return Judgement(key, profile, objective, tuple(values), state)

    async def run(
        self, source: WindowSource, clock: Callable[[], int], interval: float, complete_since: Callable[[], int] = lambda: 0,
        after_pass: Callable[[list[Judgement], int], Awaitable[None]] | None = None,
    ) -> None:
        """Judge every `interval` seconds until cancelled; a failed read is logged and the pass skipped.
        `complete_since()`: from when the source holds every result (UTC ns; 0: a store holds all);
        `after_pass` is awaited with each pass's judgements (the breaches' blame)."""
        while True:
            started = time.monotonic()
            now_ns = clock()
            try:
                data = await source.windows(now_ns - int(self.horizon_seconds * 1e9), now_ns)
            except StoreError as error:
                log.warning(kv("sla_read_failed", error=error))
            else:
                since_ns = complete_since()  # after the read: a cache write that failed during it counts
                # pure Python over every sample: in a thread the loop keeps its turns (GIL switch interval)
                judgements = await asyncio.get_running_loop().run_in_executor(None, self.judge, data, now_ns, since_ns)
                if after_pass is not None:
                    await after_pass(judgements, now_ns)
                self.pass_seconds = time.monotonic() - started
                log.debug(kv("sla_judged", series=len(data), objectives=len(judgements),
                             seconds=round(self.pass_seconds, 4)))  # fmt: skip
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
