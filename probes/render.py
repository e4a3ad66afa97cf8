"""Results for people: milliseconds, percentages and Mbit/s in tables; base units stay everywhere else."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table

from .result import Result

__all__ = ["figures_text", "outcome_text", "results_table"]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}" if seconds < 0.01 else f"{seconds * 1000:.2f}"


def figures_text(result: Result) -> str:
    """The figures that matter for the result's kind, in one readable line."""
    f = result.figures
    parts: list[str] = []
    if "rtt_median_seconds" in f:
        parts.append(
            f"rtt min/med/max {_ms(f['rtt_min_seconds'])}/{_ms(f['rtt_median_seconds'])}/{_ms(f['rtt_max_seconds'])} ms"
        )
    if "jitter_seconds" in f:
        parts.append(f"jitter {_ms(f['jitter_seconds'])} ms")
    if "packets_sent" in f:
        parts.append(f"loss {f.get('loss_ratio', 0.0) * 100:.1f}% ({int(f['packets_received'])}/{int(f['packets_sent'])})")
        extras = [f"{int(f[name])} {name}" for name in ("duplicates", "late") if f.get(name)]
        parts.extend(extras)
    if "lookup_seconds" in f:
        parts.append(f"lookup {_ms(f['lookup_seconds'])} ms {result.info.get('rcode', '')} answers {int(f.get('answer_count', 0))}")
    if "total_seconds" in f:
        phases = "/".join(_ms(f.get(f"{p}_seconds", 0.0)) for p in ("dns", "connect", "tls", "ttfb", "total"))
        parts.append(f"dns/connect/tls/ttfb/total {phases} ms")
        if "status_code" in f:
            parts.append(f"HTTP {int(f['status_code'])}")
    for direction in ("download", "upload"):
        if f"{direction}_bits_per_second" in f:
            parts.append(f"{direction} {f[f'{direction}_bits_per_second'] / 1e6:.1f} Mbit/s")
    return "  ".join(parts)


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
