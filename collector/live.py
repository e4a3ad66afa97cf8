"""The live state /metrics shows: latest result per series, cumulative counts, probe liveness, ingest tallies.

Everything here is rebuilt from the store at startup (latest results, probes) or starts at zero as any
Prometheus counter may (counts): a collector holds no state that cannot be rebuilt. All mutation
happens on the event loop, after the store has committed, so the state never shows what the store
does not hold.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Final

from qiancheng.core.result import Result

from .store import ProbeRecord, StoredResult

__all__ = [
    "LABELS",
    "PROBE_LABELS",
    "series_labels",
    "Histogram",
    "Series",
    "ProbeLive",
    "IngestTally",
    "LiveState",
]

#: label names of every per-test series, in this order; `series_labels` is the one place that fills them
LABELS: Final = ("probe", "city", "isp", "target", "target_class", "kind")
#: label names of per-probe series
PROBE_LABELS: Final = ("probe", "city", "isp")
#: the longest label value taken from a result's free text (`info`), as the wire bounds city and isp
MAX_LABEL_VALUE: Final = 128
_CONTROL = dict.fromkeys([*range(0x20), 0x7F])


def label_value(text: str) -> str:
    """A result's free text as a label value: control characters out, at most MAX_LABEL_VALUE long."""
    return text.translate(_CONTROL)[:MAX_LABEL_VALUE]


def series_labels(probe: str, city: str, isp: str, result: Result) -> tuple[str, ...]:
    """The label values (in LABELS order) of the series `result` belongs to."""
    return (probe, city, isp, result.target.name, result.target.target_class, result.kind)


class Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf), their sum and count; seconds.

    Values observed in bulk (RTT samples, ten or so per result and thousands per second) wait in a list
    and are bucketed FOLD_AT at a time, or when anything reads the histogram: one sort and one
    bisection per bound for thousands of values, instead of Python work per value on every push.
    """

    __slots__ = ("bounds", "_counts", "_total", "_count", "_pending")

    #: values waiting past this are bucketed at once (bounds memory: 8 bytes a value)
    FOLD_AT: Final = 4096

    def __init__(self, bounds: Sequence[float], counts: list[int] | None = None) -> None:
        self.bounds = bounds
        self._counts = counts if counts is not None else [0] * (len(bounds) + 1)
        self._total = 0.0
        self._count = 0
        self._pending: list[float | None] = []

    @classmethod
    def empty(cls, bounds: Sequence[float]) -> Histogram:
        return cls(bounds)

    @property
    def counts(self) -> list[int]:
        self._fold()
        return self._counts

    @property
    def total(self) -> float:
        self._fold()
        return self._total

    @total.setter
    def total(self, value: float) -> None:
        self._fold()
        self._total = value

    @property
    def count(self) -> int:
        self._fold()
        return self._count

    @count.setter
    def count(self, value: int) -> None:
        self._fold()
        self._count = value

    def observe(self, value: float) -> None:
        # bisect_left gives the first bound ≥ value: Prometheus buckets are `le` (less or equal)
        self._counts[bisect_left(self.bounds, value)] += 1
        self._total += value
        self._count += 1

    def observe_many(self, values: Sequence[float | None]) -> None:
        """Observe every value that is not None (a lost packet has no RTT)."""
        self._pending += values
        if len(self._pending) >= self.FOLD_AT:
            self._fold()

    def observe_lists(self, lists: Iterable[Sequence[float | None]]) -> None:
        """observe_many of each list (the samples of each result of a batch); the hot path of ingest."""
        pending = self._pending
        for values in lists:
            pending += values
        if len(pending) >= self.FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        present = [value for value in self._pending if value is not None]
        self._pending.clear()
        self._total += sum(present)  # in arrival order, as one by one
        self._count += len(present)
        present.sort()
        counts, below = self._counts, 0
        for index, bound in enumerate(self.bounds):  # `le` buckets: values ≤ bound
            upto = bisect_right(present, bound)
            counts[index] += upto - below
            below = upto
        counts[-1] += len(present) - below

    def cumulative(self) -> list[int]:
        """Cumulative counts, one per bound and a last one for +Inf (equal to `count`)."""
        running, out = 0, []
        for count in self.counts:
            running += count
            out.append(running)
        return out


@dataclass(slots=True)
class Series:
    """One (probe, city, isp, target, target_class, kind): its latest result and its running counts."""

    labels: tuple[str, ...]
    touched_ns: int  # when a result of this series last arrived (UTC ns); drives series_ttl
    latest: Result | None = None
    rtt: Histogram | None = None
    figure_sums: dict[str, float] = field(default_factory=dict)  # counted figure → sum over new results
    tests: dict[tuple[str, str], int] = field(default_factory=dict)  # (outcome, reason) → tests
    # info metric → label values from the latest result carrying its keys; its (start_ns, seq) beside
    info_labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    info_order: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(slots=True)
class ProbeLive:
    """A probe as its latest batch described it."""

    city: str
    isp: str
    labels: dict[str, str]
    stats: dict[str, float]
    last_seen_ns: int
    #: its software version (User-Agent) and the version of the central plan it runs (Qiancheng-Plan
    #: header), from its latest batch; "" when not said (and after a collector restart, until it pushes)
    version: str = ""
    plan: str = ""


@dataclass(slots=True)
class IngestTally:
    """The collector's own accounting of requests, batches and results since it started."""

    requests: dict[int, int] = field(default_factory=dict)  # HTTP status → requests
    batches: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("stored", "duplicate", "rejected"), 0))
    results: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("stored", "duplicate", "conflict", "rejected"), 0)
    )
    commit: Histogram | None = None


_SUCCESS: Final = ("success", "none")
#: a result's place in time: start, then seq (two results of one start are told apart by their seq)
_start_and_seq: Final = attrgetter("start_ns", "seq")


def _by_series(results: Iterable[Result]) -> dict[tuple[str, str, str], list[Result]]:
    """Results grouped by (target name, target class, kind), in their order."""
    groups: dict[tuple[str, str, str], list[Result]] = {}
    for result in results:
        target = result.target
        key = (target.name, target.target_class, result.kind)
        group = groups.get(key)
        if group is None:
            groups[key] = [result]
        else:
            group.append(result)
    return groups


class LiveState:
    """The in-memory state behind /metrics.

    `counted_figures` are summed into counters (packets sent, ...); results of `histogram_kinds` feed
    every sample into the RTT histogram with `rtt_bounds` (seconds). `info_keys` maps an info metric to
    the info keys it shows, kept from the latest result (by start time) that carries any of them. A
    series that received nothing for `series_ttl_ns` is forgotten (0: never).
    """

    def __init__(
        self,
        counted_figures: Collection[str],
        histogram_kinds: Collection[str],
        rtt_bounds: Sequence[float],
        commit_bounds: Sequence[float],
        series_ttl_ns: int = 0,
        info_keys: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.counted_figures = tuple(counted_figures)
        self.info_keys = {metric: tuple(keys) for metric, keys in (info_keys or {}).items()}
        self._info_key_set = frozenset(key for keys in self.info_keys.values() for key in keys)
        self._counted_key_set = frozenset(self.counted_figures)
        self.histogram_kinds = frozenset(histogram_kinds)
        self.rtt_bounds = tuple(rtt_bounds)
        self.series_ttl_ns = series_ttl_ns
        self.series: dict[tuple[str, ...], Series] = {}
        self.probes: dict[str, ProbeLive] = {}
        self.ingest = IngestTally(commit=Histogram.empty(tuple(commit_bounds)))

    def _series(self, labels: tuple[str, ...], kind: str, now_ns: int) -> Series:
        series = self.series.get(labels)
        if series is None:
            rtt = Histogram.empty(self.rtt_bounds) if kind in self.histogram_kinds else None
            series = self.series[labels] = Series(labels=labels, touched_ns=now_ns, rtt=rtt)
        series.touched_ns = max(series.touched_ns, now_ns)
        return series

    def _offer_latest(self, series: Series, result: Result) -> None:
        # the latest by start time wins: a late result replayed from a spool must not hide a newer one
        latest = series.latest
        if latest is None or (result.start_ns, result.seq) > (latest.start_ns, latest.seq):
            series.latest = result

    def _offer_info(self, series: Series, result: Result) -> None:
        info = result.info
        order = (result.start_ns, result.seq)
        for metric, keys in self.info_keys.items():
            if any(key in info for key in keys) and order > series.info_order.get(metric, (-1, -1)):
                series.info_labels[metric] = tuple(label_value(info.get(key, "")) for key in keys)
                series.info_order[metric] = order

    def apply(self, probe: str, city: str, isp: str, results: Iterable[Result], now_ns: int) -> None:
        """Account results just stored for the first time (never re-applied: counts stay exact).

        A batch holds results of a few series or of many: each series is looked up once per batch, and
        the RTT samples of all its results go into its histogram together.
        """
        info_keys = self._info_key_set
        counted_keys = self._counted_key_set
        for (name, target_class, kind), group in _by_series(results).items():
            series = self._series((probe, city, isp, name, target_class, kind), kind, now_ns)
            # the latest by start time wins: a late result replayed from a spool must not hide a newer one
            newest = max(group, key=_start_and_seq)
            if series.latest is None or _start_and_seq(newest) > _start_and_seq(series.latest):
                series.latest = newest
            tests = series.tests
            failed = [result for result in group if not result.success]
            if len(failed) < len(group):
                tests[_SUCCESS] = tests.get(_SUCCESS, 0) + len(group) - len(failed)
            for result in failed:
                outcome = ("failure", result.error or "error")
                tests[outcome] = tests.get(outcome, 0) + 1
            sums = series.figure_sums
            for figures in [result.figures for result in group if not counted_keys.isdisjoint(result.figures)]:
                for figure in counted_keys.intersection(figures):
                    sums[figure] = sums.get(figure, 0.0) + figures[figure]
            if info_keys:
                for result in group:
                    if not info_keys.isdisjoint(result.info):
                        self._offer_info(series, result)
            if series.rtt is not None:
                series.rtt.observe_lists([result.samples for result in group])

    def saw_probe(
        self, probe: str, city: str, isp: str, labels: dict[str, str], stats: dict[str, float], now_ns: int,
        version: str = "", plan: str = "",
    ) -> None:
        """Record that an authenticated, valid batch arrived from `probe` (stored or duplicate)."""
        self.probes[probe] = ProbeLive(city=city, isp=isp, labels=dict(labels), stats=dict(stats), last_seen_ns=now_ns,
                                       version=version, plan=plan)  # fmt: skip

    def restore(self, latest: Iterable[StoredResult], probes: Iterable[ProbeRecord], allowed: Collection[str]) -> None:
        """Rebuild latest results and probe liveness from the store (probes no longer configured are left out)."""
        for stored in latest:
            if stored.probe_id not in allowed:
                continue
            labels = series_labels(stored.probe_id, stored.city, stored.isp, stored.result)
            series = self._series(labels, stored.result.kind, stored.received_ns)
            self._offer_latest(series, stored.result)
            self._offer_info(series, stored.result)
        for record in probes:
            if record.probe_id in allowed:
                self.probes[record.probe_id] = ProbeLive(
                    city=record.city, isp=record.isp, labels=record.labels, stats=record.stats,
                    last_seen_ns=record.last_seen_ns,
                )  # fmt: skip

    def expire(self, now_ns: int) -> int:
        """Forget series idle longer than the TTL; returns how many went."""
        if not self.series_ttl_ns:
            return 0
        horizon = now_ns - self.series_ttl_ns
        stale = [labels for labels, series in self.series.items() if series.touched_ns < horizon]
        for labels in stale:
            del self.series[labels]
        return len(stale)

    # -- ingest accounting -----------------------------------------------------------------------------

    def count_request(self, status: int) -> None:
        self.ingest.requests[status] = self.ingest.requests.get(status, 0) + 1

    def count_batch(self, outcome: str, results: int = 0) -> None:
        """One batch with `results` results: stored, duplicate or rejected."""
        self.ingest.batches[outcome] = self.ingest.batches.get(outcome, 0) + 1
        if results:
            self.count_results(outcome, results)

    def count_results(self, outcome: str, results: int) -> None:
        if results:
            self.ingest.results[outcome] = self.ingest.results.get(outcome, 0) + results

    def observe_commit(self, seconds: float) -> None:
        assert self.ingest.commit is not None
        self.ingest.commit.observe(seconds)
