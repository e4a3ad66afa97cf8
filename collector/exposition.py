"""The per-test series of /metrics, written straight into the Prometheus text format.

They are nearly all of a collector's samples: a city's three probes with the shipped plan make about two
thousand, so a shard of 250 cities half a million. prometheus_client builds a Sample object and a
label dict per sample and sorts and escapes the labels each time, about 12 µs a sample here: six
seconds of the event loop per scrape for such a shard, while pushes wait. Here the label set of each
row of a family is a format string made once at import (labels sorted by name, as prometheus_client
writes them), filled with a series' escaped label values: about 1 µs a sample, and the bytes are the
same as prometheus_client's (tests/unit/test_exposition.py compares them).

What each family holds, and the order of the families, rows and series, is LiveCollector's
(collector/metrics.py); this module only writes it faster. The per-probe and ingest families, a few per
probe, stay with prometheus_client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from prometheus_client.utils import floatToGoString

from .live import LABELS, LiveState, Series
from .metrics import FIGURE_COUNTERS, FIGURE_GAUGES, HELP, INFO_GAUGES, FigureMetric

__all__ = ["render_series"]

_BASE: Final = len(LABELS)
_INF: Final = float("inf")
#: prometheus_client's number format (Go's), for what the quick paths below leave to it
_go_float: Final[Callable[[float], str]] = floatToGoString


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    """floatToGoString(value), quicker for the usual case: a float below 1e6 is written as repr() writes it."""
    if type(value) is float and -_INF < value < 1e6:
        return repr(value)
    return _go_float(value)


def _count(value: int) -> str:
    """floatToGoString(float(value)) for a count: `12.0`."""
    return f"{value}.0" if 0 <= value < 1_000_000 else _go_float(value)


def _literal(text: str) -> str:
    """`text` inside a str.format template."""
    return text.replace("{", "{{").replace("}", "}}")


def _template(name: str, fixed: Sequence[tuple[str, str]] = (), free: Sequence[str] = ()) -> str:
    """A sample line up to its value: `name{labels} `, labels sorted by name. The series' labels are
    fields 0..5 (LABELS order), `free` labels the next ones; `fixed` labels are written in."""
    values = {label: f"{{{index}}}" for index, label in enumerate(LABELS)}
    values |= {label: f"{{{_BASE + index}}}" for index, label in enumerate(free)}
    values |= {label: _literal(_escape(value)) for label, value in fixed}
    pairs = ",".join(f'{label}="{values[label]}"' for label in sorted(values))
    return f"{_literal(name)}{{{{{pairs}}}}} "


def _header(family: str, kind: str) -> str:
    text = HELP[family].replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {family} {text}\n# TYPE {family} {kind}\n"


_SUCCESS: Final = _template("qiancheng_test_success")
_DURATION: Final = _template("qiancheng_test_duration_seconds")
_STARTED: Final = _template("qiancheng_test_timestamp_seconds")
_TESTS: Final = _template("qiancheng_tests_total", free=("outcome", "reason"))
_RTT: Final = "qiancheng_rtt_seconds"


def _families(table: Sequence[FigureMetric]) -> dict[str, list[tuple[FigureMetric, str]]]:
    """The table's rows by family, in order of first appearance, each with its line template."""
    families: dict[str, list[tuple[FigureMetric, str]]] = {}
    for row in table:
        families.setdefault(row.metric, []).append((row, _template(row.metric, row.extra)))
    return families


_GAUGE_FAMILIES: Final = _families(FIGURE_GAUGES)
_COUNTER_FAMILIES: Final = _families(FIGURE_COUNTERS)
_INFO_TEMPLATES: Final = tuple((row, _template(row.metric, free=row.keys)) for row in INFO_GAUGES)


def _split_at_le() -> tuple[str, str]:
    """Templates of the labels sorted before `le` and after it (the series' own labels only)."""
    before = [label for label in sorted(LABELS) if label < "le"]
    after = [label for label in sorted(LABELS) if label > "le"]
    def fields(names: list[str]) -> str:
        return ",".join(f'{label}="{{{LABELS.index(label)}}}"' for label in names)
    return fields(before), fields(after)


_BEFORE_LE, _AFTER_LE = _split_at_le()


def render_series(state: LiveState, now_ns: int) -> bytes:
    """Every per-test family of `state` (idle series expired first), as prometheus_client would write it."""
    state.expire(now_ns)
    series = list(state.series.values())
    labels = [tuple(_escape(value) for value in one.labels) for one in series]
    out: list[str] = []
    write = out.append
    _test_families(series, labels, write)
    carrying = _Carriers(series, labels)
    for family, rows in _GAUGE_FAMILIES.items():
        write(_header(family, "gauge"))
        for row, template in rows:
            for one, values in carrying(row.kinds):
                latest = one.latest
                if latest is not None and (figure := row.shows(latest)) is not None:
                    write(template.format(*values) + _number(figure) + "\n")
    for family, rows in _COUNTER_FAMILIES.items():
        write(_header(family, "counter"))
        for row, template in rows:
            for one, values in carrying(row.kinds):
                if (total := one.figure_sums.get(row.figure)) is not None:
                    write(template.format(*values) + _number(total) + "\n")
    for info, template in _INFO_TEMPLATES:
        write(_header(info.metric, "gauge"))
        for one, values in carrying(info.kinds):
            if (shown := one.info_labels.get(info.metric)) is not None:
                write(template.format(*values, *(_escape(value) for value in shown)) + "1.0\n")
    _rtt_family(series, labels, state.rtt_bounds, write)
    return "".join(out).encode()


class _Carriers:
    """The series of a set of kinds with their escaped label values, in series order; each set worked out
    once per render (a few sets serve the forty-odd rows)."""

    def __init__(self, series: Sequence[Series], labels: Sequence[tuple[str, ...]]) -> None:
        self._all = list(zip(series, labels))
        self._by_kinds: dict[frozenset[str], list[tuple[Series, tuple[str, ...]]]] = {}

    def __call__(self, kinds: frozenset[str] | None) -> list[tuple[Series, tuple[str, ...]]]:
        if kinds is None:
            return self._all
        carriers = self._by_kinds.get(kinds)
        if carriers is None:  # LABELS ends with kind
            carriers = self._by_kinds[kinds] = [(one, values) for one, values in self._all if one.labels[-1] in kinds]
        return carriers


def _test_families(series: Sequence[Series], labels: Sequence[tuple[str, ...]], write: Callable[[str], None]) -> None:
    latest = [(one.latest, values) for one, values in zip(series, labels) if one.latest is not None]
    write(_header("qiancheng_test_success", "gauge"))
    for result, values in latest:
        write(_SUCCESS.format(*values) + ("1.0\n" if result.success else "0.0\n"))
    write(_header("qiancheng_test_duration_seconds", "gauge"))
    for result, values in latest:
        write(_DURATION.format(*values) + _number(result.duration_seconds) + "\n")
    write(_header("qiancheng_test_timestamp_seconds", "gauge"))
    for result, values in latest:
        write(_STARTED.format(*values) + _go_float(result.start_ns / 1e9) + "\n")
    write(_header("qiancheng_tests_total", "counter"))
    for one, values in zip(series, labels):
        for (outcome, reason), count in sorted(one.tests.items()):
            write(_TESTS.format(*values, _escape(outcome), _escape(reason)) + _count(count) + "\n")


def _rtt_family(series: Sequence[Series], labels: Sequence[tuple[str, ...]], bounds: Sequence[float],
                write: Callable[[str], None]) -> None:  # fmt: skip
    les = [f'le="{_go_float(bound)}",' for bound in bounds] + ['le="+Inf",']
    count_template, sum_template = _template(f"{_RTT}_count"), _template(f"{_RTT}_sum")
    write(_header(_RTT, "histogram"))
    for one, values in zip(series, labels):
        histogram = one.rtt
        if histogram is None:
            continue
        head = f"{_RTT}_bucket{{{_BEFORE_LE.format(*values)},"
        tail = f"{_AFTER_LE.format(*values)}}} "
        running = 0
        for le, count in zip(les, histogram.counts):
            running += count
            write(f"{head}{le}{tail}{_count(running)}\n")
        write(count_template.format(*values) + _count(running) + "\n")
        write(sum_template.format(*values) + _number(histogram.total) + "\n")
