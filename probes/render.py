"""Results for people: milliseconds, percentages and Mbit/s in tables; base units stay everywhere else."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from rich.console import Console
from rich.progress import BarColumn, TaskID, TextColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from qiancheng.core.kinds import FigureGroup, kind_named
from qiancheng.core.result import Hop, Result

from .measure.progress import Progress

__all__ = ["ProgressBar", "figures_text", "hops_table", "outcome_text", "results_table"]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}" if seconds < 0.01 else f"{seconds * 1000:.2f}"


def _round_trips(result: Result) -> list[str]:
    f, parts = result.figures, []
    if "rtt_median_seconds" in f:
        parts.append(
            f"rtt min/med/max {_ms(f['rtt_min_seconds'])}/{_ms(f['rtt_median_seconds'])}/{_ms(f['rtt_max_seconds'])} ms"
        )
    if "jitter_seconds" in f:
        parts.append(f"jitter {_ms(f['jitter_seconds'])} ms")
    if "packets_sent" in f:
        parts.append(f"loss {f.get('loss_ratio', 0.0) * 100:.1f}% ({int(f['packets_received'])}/{int(f['packets_sent'])})")
        parts.extend(f"{int(f[name])} {name}" for name in ("duplicates", "late") if f.get(name))
    return parts


def _dns(result: Result) -> list[str]:
    f = result.figures
    if "lookup_seconds" not in f:
        return []
    return [f"lookup {_ms(f['lookup_seconds'])} ms {result.info.get('rcode', '')} answers {int(f.get('answer_count', 0))}"]


def _http_phases(result: Result) -> list[str]:
    f, parts = result.figures, []
    if "total_seconds" in f:
        phases = "/".join(_ms(f.get(f"{p}_seconds", 0.0)) for p in ("dns", "connect", "tls", "ttfb", "total"))
        parts.append(f"dns/connect/tls/ttfb/total {phases} ms")
        if "status_code" in f:
            parts.append(f"HTTP {int(f['status_code'])}")
    return parts


def _throughput(result: Result) -> list[str]:
    f, parts = result.figures, []
    if "throughput_bits_per_second" in f:
        parts.append(
            f"{_mbit(f['throughput_bits_per_second'])} Mbit/s (p90 {_mbit(f['throughput_p90_bits_per_second'])}) "
            f"over {f['window_seconds']:.1f} s, {int(f['streams'])} streams, {f['bytes'] / 1e6:.1f} MB"
        )
        if "tcp_rtt_seconds" in f:
            parts.append(f"tcp rtt {_ms(f['tcp_rtt_seconds'])} ms")
        if "tcp_retransmits" in f:
            parts.append(f"retransmits {int(f['tcp_retransmits'])}")
        if "stopped_by" in result.info:
            parts.append(f"stopped by {result.info['stopped_by'].replace('_', ' ')}")
    return parts


def _loaded_latency(result: Result) -> list[str]:
    f, parts = result.figures, []
    if "loaded_rtt_seconds" in f:
        parts.append(f"rtt idle/loaded {_ms(f['idle_rtt_seconds'])}/{_ms(f['loaded_rtt_seconds'])} ms")
    if "responsiveness_rpm" in f:
        parts.append(f"responsiveness {f['responsiveness_rpm']:.0f} RPM")
    return parts


def _one_way(result: Result) -> list[str]:
    f = result.figures
    if "forward_delay_median_seconds" not in f:
        return []
    return [
        f"one-way fwd/back {_ms(f['forward_delay_median_seconds'])}/{_ms(f['backward_delay_median_seconds'])} ms "
        f"(clock error ≤ {_duration(f['clock_error_seconds'])})"
    ]


def _voice(result: Result) -> list[str]:
    return [f"MOS≈{result.figures['mos']:.2f}"] if "mos" in result.figures else []


def _cdn(result: Result) -> list[str]:
    if "cache_status" not in result.info:
        return []
    edge = result.info.get("edge")
    return [f"cache {result.info['cache_status']}" + (f" at {edge}" if edge else "")]


def _path(result: Result) -> list[str]:
    f, parts = result.figures, []
    if "hop_count" in f:
        reached = "reached" if f.get("destination_reached") else "not reached"
        parts.append(f"{int(f['hop_count'])} hops, destination {reached}")
    if "rtt_median_seconds" in f:
        parts.append(f"rtt med {_ms(f['rtt_median_seconds'])} ms, loss {f.get('loss_ratio', 0.0) * 100:.1f}%")
    if f.get("rate_limited_hops"):
        parts.append(f"{int(f['rate_limited_hops'])} rate-limited hops")
    if f.get("path_changes"):
        parts.append(f"path changed (was {result.info.get('previous_fingerprint', '?')})")
    if "fingerprint" in result.info:
        parts.append(f"path {result.info['fingerprint']}")
    return parts


def _capacity(result: Result) -> list[str]:
    f = result.figures
    if "capacity_bits_per_second" not in f:
        return []
    direction = result.info.get("direction", "")
    parts = [
        f"{direction} capacity {_mbit(f['capacity_bits_per_second'])} Mbit/s IP layer "
        f"({_mbit(f['capacity_ethernet_bits_per_second'])} Ethernet) in sub-interval {int(f['capacity_sub_interval'])} "
        f"of {int(f['sub_intervals'])}",
        f"loss {f.get('loss_ratio', 0.0) * 100:.2f}%",
    ]
    if "rtt_variation_max_seconds" in f:
        parts.append(f"rtt +{_ms(f['rtt_variation_min_seconds'])}..+{_ms(f['rtt_variation_max_seconds'])} ms")
    return parts


_GROUP_TEXT: Final[dict[FigureGroup, Callable[[Result], list[str]]]] = {
    "round_trips": _round_trips,
    "dns": _dns,
    "http_phases": _http_phases,
    "throughput": _throughput,
    "loaded_latency": _loaded_latency,
    "one_way": _one_way,
    "voice": _voice,
    "cdn": _cdn,
    "path": _path,
    "capacity": _capacity,
}


def figures_text(result: Result) -> str:
    """The figures of the groups the result's kind reports (qiancheng.core.kinds), in one readable line."""
    try:
        groups = kind_named(result.kind).figures
    except KeyError:  # a kind this version does not know (a newer probe's, read back from the collector)
        return ""
    return "  ".join(part for group in groups for part in _GROUP_TEXT[group](result))


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{_ms(seconds)} ms"


def _mbit(bits_per_second: float) -> str:
    return f"{bits_per_second / 1e6:.1f}"


class ProgressBar:
    """A live bar per running download/upload on the console (stderr): phase, time, current rate."""

    def __init__(self, console: Console) -> None:
        self._bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[rate]}"),
            console=console, transient=True,
        )
        self._tasks: dict[tuple[str, str], TaskID] = {}

    def __enter__(self) -> ProgressBar:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def update(self, progress: Progress) -> None:
        """Show `progress` (the callback measurement code reports through)."""
        key = (progress.kind, progress.target)
        if key not in self._tasks:
            self._tasks[key] = self._bar.add_task("", total=1.0, rate="")
        self._bar.update(
            self._tasks[key],
            description=f"{progress.kind} {progress.target} {progress.phase}",
            total=max(progress.planned_seconds, 1e-9),
            completed=min(progress.elapsed_seconds, progress.planned_seconds),
            rate=f"{_mbit(progress.rate_bits_per_second)} Mbit/s",
        )


def outcome_text(result: Result) -> str:
    """`ok`, or the failure reason with its detail."""
    if result.success:
        return "ok"
    return f"{result.error}: {result.detail}" if result.detail else str(result.error)


def results_table(results: Iterable[Result], title: str | None = None, show_probe: str | None = None) -> Table:
    """A table of results, one row each: target, class, kind, outcome, figures."""
    table = Table(title=title, expand=False)
    if show_probe is not None:
        table.add_column("probe")
    for column in ("target", "class", "kind", "outcome", "figures"):
        table.add_column(column, overflow="fold")
    for result in results:
        style = None if result.success else "red"
        row = [result.target.name, result.target.target_class, result.kind, outcome_text(result), figures_text(result)]
        table.add_row(*([show_probe] if show_probe is not None else []) + row, style=style)
    return table


def _hop_ms(value: float | None) -> str:
    return "" if value is None else _ms(value)


def hops_table(hops: Iterable[Hop], title: str | None = None) -> Table:
    """A traced path as mtr shows one: per hop its address, loss and RTTs (last, median, best, worst);
    a flow column when there are several; rate limiting, unreachables, MPLS labels and ASNs noted."""
    hops = list(hops)
    several_flows = any(hop.flow for hop in hops)
    table = Table(title=title, expand=False)
    columns = (["flow"] if several_flows else []) + ["hop", "address", "loss", "sent", "last", "median", "best", "worst", "notes"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("address", "notes") else "right", overflow="fold")
    for hop in hops:
        address = hop.address or "???"
        if hop.name:
            address = f"{hop.name} ({address})"
        notes = []
        if hop.rate_limited:
            notes.append("rate limited, not path loss")
        if hop.unreachable:
            notes.append(f"!{hop.unreachable} unreachable")
        if hop.asn is not None:
            notes.append(f"AS{hop.asn}")
        if hop.mpls:
            notes.append("MPLS " + "/".join(str(label) for label in hop.mpls))
        if hop.others:
            notes.append("also " + ", ".join(hop.others))
        row = [str(hop.ttl), address, f"{hop.loss_ratio * 100:.1f}%", str(hop.sent), _hop_ms(hop.rtt_last_seconds),
               _hop_ms(hop.rtt_median_seconds), _hop_ms(hop.rtt_min_seconds), _hop_ms(hop.rtt_max_seconds), "; ".join(notes)]
        table.add_row(*([str(hop.flow)] if several_flows else []) + row,
                      style="dim" if hop.rate_limited or not hop.received else None)
    return table
