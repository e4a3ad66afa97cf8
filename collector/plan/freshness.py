"""Which probes run a plan other than the one the collector would give them now, and for how long
(`qiancheng_probe_plan_outdated_seconds`, the fleet listing's `plan_outdated_seconds`).

A probe that polls its plan every few minutes runs the new one within that time after plan.yaml
changes; one that stays behind cannot reach the plan route, refuses the plan it gets (it says why in
its log), or is given none (a 422: more targets than its limit, a city the plan does not know). The
clock starts when the collector first sees the difference, at a push, a scrape or a listing: after a
collector restart it starts again.
"""

from __future__ import annotations

from collections.abc import Callable

from ..live import ProbeLive
from .model import Member

__all__ = ["PlanFreshness"]


class PlanFreshness:
    """`expected`, once the plan service is up, gives the version a probe would get now (None: none)."""

    def __init__(self) -> None:
        self.expected: Callable[[Member], str | None] | None = None
        self._behind_since: dict[str, int] = {}  # probe → when it was first seen on another plan, UTC ns

    def outdated_seconds(self, probe: str, live: ProbeLive, now_ns: int) -> float | None:
        """None: the probe runs no central plan (or this collector serves none); 0: it runs the current one;
        else seconds since it was first seen running another."""
        if self.expected is None or not live.plan:
            self._behind_since.pop(probe, None)
            return None
        labels = tuple(sorted(live.labels.items()))
        if self.expected(Member(probe, live.city, live.isp, labels)) == live.plan:
            self._behind_since.pop(probe, None)
            return 0.0
        since = self._behind_since.setdefault(probe, now_ns)
        return max(0.0, (now_ns - since) / 1e9)
