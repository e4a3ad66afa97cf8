"""The queries of the dashboards, as Grafana would send them to Prometheus.

Shared by the dashboard tests and the preview renderer, so that both run exactly what Grafana runs:
variables at "All" (`.*`), and Grafana's interval macros filled in for a given range and step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["HERE", "PanelQuery", "dashboard_files", "load", "panel_queries", "variable_queries", "expand"]

HERE: Final = Path(__file__).resolve().parent
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_LABEL_VALUES = re.compile(r"^label_values\((.*),\s*\w+\)$", re.S)


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel."""

    dashboard: str
    panel_id: int
    panel_type: str
    title: str
    ref: str
    expr: str
    instant: bool
    legend: str


def dashboard_files() -> list[Path]:
    return sorted(HERE.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def panel_queries(dashboard: dict[str, Any]) -> Iterator[PanelQuery]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield PanelQuery(dashboard["uid"], panel["id"], panel["type"], panel["title"], target["refId"],
                             target["expr"], bool(target.get("instant")), target.get("legendFormat", ""))  # fmt: skip


def variable_queries(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL selector inside each query variable's `label_values(selector, label)`."""
    out = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = _LABEL_VALUES.match(query)
            out.append(match[1] if match else query)
    return out


def expand(expr: str, range_seconds: float, step_seconds: float, scrape_seconds: float = 15.0) -> str:
    """`expr` as Grafana sends it: every variable at All, `$__rate_interval` = max(4 × scrape, step + scrape)."""
    rate_interval = max(4 * scrape_seconds, step_seconds + scrape_seconds)
    macros = {
        "__rate_interval": f"{rate_interval:.0f}s",
        "__interval": f"{max(step_seconds, scrape_seconds):.0f}s",
        "__range": f"{range_seconds:.0f}s",
    }

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        return macros.get(name, ".*")

    return _VARIABLE.sub(replace, expr)
