"""Render a PNG of each dashboard from the same queries Grafana runs, for review without a Grafana.

    python dashboards/preview.py                      # run a chain on loopback for 90 s, then render
    python dashboards/preview.py --prometheus URL     # render from a Prometheus that already has data

Writes build/dashboards-preview/<uid>.png (`make dashboards-preview`). Needs matplotlib (the `preview`
extra). Panels keep their grid positions; a panel with no data says so instead of drawing nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dashboards.queries import dashboard_files, expand, load  # noqa: E402

Json = dict[str, Any]
UNIT_SCALE: Final = {"s": (1e3, "ms"), "percentunit": (100.0, "%"), "bps": (1e-6, "Mbit/s"), "reqps": (1.0, "/s")}
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _get(self, path: str, **params: str) -> list[Json]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            answer = json.loads(response.read())
        result: list[Json] = answer["data"]["result"]
        return result

    def instant(self, expr: str) -> list[Json]:
        return self._get("/api/v1/query", query=expr)

    def series(self, expr: str, start: float, end: float, step: float) -> list[Json]:
        return self._get("/api/v1/query_range", query=expr, start=str(start), end=str(end), step=str(step))


def _legend(template: str, labels: dict[str, str]) -> str:
    if template in ("", "__auto"):
        return ", ".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"
    return _LEGEND.sub(lambda m: labels.get(m[1], ""), template)


def _unit(panel: Json) -> tuple[float, str]:
    return UNIT_SCALE.get(panel["fieldConfig"]["defaults"].get("unit", ""), (1.0, ""))


def _steps(panel: Json) -> list[tuple[float, str]]:
    thresholds = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    return [(-math.inf if s["value"] is None else float(s["value"]), s["color"]) for s in thresholds]


class Renderer:
    """Draws one dashboard's panels from Prometheus over [end - range, end]."""

    def __init__(self, prometheus: Prometheus, range_seconds: float, end: float) -> None:
        self.prometheus = prometheus
        self.range_seconds = range_seconds
        self.end = end
        self.step = max(1.0, range_seconds / 120)

    def _expr(self, target: Json) -> str:
        return expand(target["expr"], self.range_seconds, self.step, scrape_seconds=1.0)

    def _range(self, target: Json) -> list[Json]:
        return self.prometheus.series(self._expr(target), self.end - self.range_seconds, self.end, self.step)

    def panel(self, ax: Axes, panel: Json) -> None:
        ax.set_title(panel["title"], fontsize=9, loc="left")
        draw = {"timeseries": self._timeseries, "stat": self._stat, "table": self._table,
                "heatmap": self._heatmap, "state-timeline": self._state_timeline}[panel["type"]]  # fmt: skip
        if not draw(ax, panel):
            ax.text(0.5, 0.5, "no data", ha="center", va="center", color="grey", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])

    def _timeseries(self, ax: Axes, panel: Json) -> bool:
        scale, unit = _unit(panel)
        drawn = False
        for target in panel["targets"]:
            for series in self._range(target):
                times = [float(t) - self.end for t, _ in series["values"]]
                values = [float(v) * scale for _, v in series["values"]]
                ax.plot(times, values, linewidth=1, label=_legend(target["legendFormat"], series["metric"]))
                drawn = True
        if drawn:
            ax.set_xlabel("seconds before the end", fontsize=7)
            ax.set_ylabel(unit, fontsize=7)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6, loc="upper left", ncol=2)
        return drawn

    def _stat(self, ax: Axes, panel: Json) -> bool:
        scale, unit = _unit(panel)
        results = self.prometheus.instant(self._expr(panel["targets"][0]))
        ax.set_xticks([])
        ax.set_yticks([])
        if not results:
            return False
        value = float(results[0]["value"][1]) * scale
        ax.text(0.5, 0.45, f"{value:.3g} {unit}".strip(), ha="center", va="center", fontsize=22, transform=ax.transAxes)
        return True

    def _table(self, ax: Axes, panel: Json) -> bool:
        rename = {}
        for transformation in panel.get("transformations", []):
            rename.update(transformation.get("options", {}).get("renameByName", {}))
        scale_by_column = {o["matcher"]["options"]: o["properties"][0]["value"] for o in panel["fieldConfig"]["overrides"]}
        rows: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        columns: list[str] = []
        for target in panel["targets"]:
            column = rename.get(f"Value #{target['refId']}", rename.get("Value", "value"))
            columns.append(column)
            unit = scale_by_column.get(column, panel["fieldConfig"]["defaults"].get("unit", ""))
            scale, shown = UNIT_SCALE.get(unit, (1.0, ""))
            for series in self.prometheus.instant(self._expr(target)):
                key = tuple(sorted((k, v) for k, v in series["metric"].items() if k not in ("__name__", "job", "instance")))
                rows.setdefault(key, {})[column] = f"{float(series['value'][1]) * scale:.3g} {shown}".strip()
        ax.axis("off")
        if not rows:
            return False
        keys = sorted({k for key in rows for k, _ in key})
        body = [[dict(key).get(k, "") for k in keys] + [cells.get(c, "–") for c in columns] for key, cells in sorted(rows.items())]
        table = ax.table(cellText=body[:25], colLabels=keys + columns, loc="upper center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(6)
        return True

    def _heatmap(self, ax: Axes, panel: Json) -> bool:
        series = self._range(panel["targets"][0])
        if not series:
            return False
        by_le = sorted(series, key=lambda s: float(s["metric"]["le"]))
        bounds = [float(s["metric"]["le"]) for s in by_le]
        times = sorted({float(t) for s in by_le for t, _ in s["values"]})
        column = {t: i for i, t in enumerate(times)}
        grid = [[0.0] * len(times) for _ in by_le]
        for row, s in enumerate(by_le):
            for t, v in s["values"]:
                grid[row][column[float(t)]] = float(v)
        # cumulative `le` counts → counts per bucket
        for row in range(len(grid) - 1, 0, -1):
            grid[row] = [max(0.0, a - b) for a, b in zip(grid[row], grid[row - 1], strict=True)]
        ax.imshow(grid, aspect="auto", origin="lower", cmap="Greys", interpolation="nearest",
                  extent=(times[0] - self.end, times[-1] - self.end, 0, len(bounds)))  # fmt: skip
        labels = [f"{b * 1e3:g}" if math.isfinite(b) else "+Inf" for b in bounds]
        ax.set_yticks([i + 0.5 for i in range(len(bounds))][::2], labels[::2], fontsize=6)
        ax.set_ylabel("RTT bucket ≤ ms", fontsize=7)
        ax.tick_params(labelsize=7)
        return True

    def _state_timeline(self, ax: Axes, panel: Json) -> bool:
        steps = _steps(panel)
        colours = {"green": "#56a64b", "yellow": "#f2cc0c", "orange": "#ff9830", "red": "#e02f44"}
        cmap = ListedColormap([colours.get(c, c) for _, c in steps])
        series = self._range(panel["targets"][0])
        if not series:
            return False
        names = []
        for row, s in enumerate(series):
            points = [(float(t) - self.end, float(v)) for t, v in s["values"] if math.isfinite(float(v))]
            times = [t for t, _ in points]
            levels = [max(i for i, (low, _) in enumerate(steps) if v >= low) for _, v in points]
            ax.scatter(times, [row] * len(times), c=levels, cmap=cmap, vmin=0, vmax=len(steps) - 1, marker="s", s=18)
            names.append(_legend(panel["targets"][0]["legendFormat"], s["metric"]))
        ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.tick_params(labelsize=7)
        return True


def render(dashboard: Json, renderer: Renderer, out: Path) -> Path:
    """One PNG for the dashboard, panels placed as on the Grafana grid."""
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width, unit_height = 22.0, 0.42
    figure = plt.figure(figsize=(width, rows * unit_height + 0.8))
    figure.suptitle(f"{dashboard['title']} (last {renderer.range_seconds:.0f} s)", fontsize=13, x=0.01, ha="left")
    for panel in panels:
        grid = panel["gridPos"]
        left, top = grid["x"] / 24, 1 - (grid["y"] * unit_height + 0.6) / (rows * unit_height + 0.8)
        height = grid["h"] * unit_height / (rows * unit_height + 0.8)
        ax = figure.add_axes((left + 0.035, top - height + 0.04 * height, grid["w"] / 24 - 0.045, height * 0.8))
        renderer.panel(ax, panel)
    path = out / f"{dashboard['uid']}.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a PNG of each qiancheng dashboard from Prometheus.")
    parser.add_argument("--prometheus", metavar="URL", help="render from this Prometheus instead of a local chain")
    parser.add_argument("--seconds", type=float, default=90.0, help="how long the local chain runs (default 90)")
    parser.add_argument("--range", type=float, default=0.0, help="time range to show, seconds (default: --seconds)")
    parser.add_argument("--out", type=Path, default=Path("build/dashboards-preview"), help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    range_seconds = args.range or args.seconds
    with tempfile.TemporaryDirectory(prefix="qiancheng-preview-") as workdir:
        chain = None
        url = args.prometheus
        if url is None:
            from dashboards.chain import Chain

            chain = Chain(Path(workdir))
            try:
                chain.start()
                print(f"chain on loopback, Prometheus at {chain.prometheus_url}; collecting for {args.seconds:.0f} s")
                time.sleep(args.seconds)
            except BaseException:
                chain.stop()
                raise
            url = chain.prometheus_url
        try:
            renderer = Renderer(Prometheus(url), range_seconds, time.time())
            for path in dashboard_files():
                print(render(load(path), renderer, args.out))
        finally:
            if chain is not None:
                chain.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
