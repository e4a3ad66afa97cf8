"""The fleet as the collector sees it (`GET /api/v1/probes`): every registered probe, when it was last
heard from, and a state a NOC can filter on.

States: `revoked` (the registry refuses it), `never` (registered, no batch received yet), `stale` (its
latest batch is older than `stale_after`, default 5 minutes: the box is down, cut off, or its clock is
wrong), `ok`. City and ISP are the registry's for an enrolled probe, else what its latest batch said.
Beside them, its health as its latest batch said it: software and plan version, how long the plan has
been outdated (collector/plan/freshness.py), spool backlog and drops, uptime, clock synchronisation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, TypeAlias

from .bodies import FleetProbe, ProbesResponse
from .live import ProbeLive
from .plan.freshness import PlanFreshness
from .records import RegistryEntry

__all__ = ["FLEET_FILTERS", "STATES", "DEFAULT_STALE_AFTER_SECONDS", "fleet", "FleetQueryError", "parse_query"]

FLEET_FILTERS = ("city", "isp", "state", "version", "stale_after")
State: TypeAlias = Literal["ok", "stale", "never", "revoked"]
STATES: tuple[State, ...] = ("ok", "stale", "never", "revoked")
DEFAULT_STALE_AFTER_SECONDS = 300.0
_MAX_STALE_AFTER_SECONDS = 365 * 86400.0


class FleetQueryError(ValueError):
    """A query the listing cannot answer: the parameter at fault and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def parse_query(query: Mapping[str, str]) -> tuple[dict[str, str], float]:
    """The exact-match filters and `stale_after` (seconds) of a query; raises FleetQueryError."""
    unknown = sorted(set(query) - set(FLEET_FILTERS))
    if unknown:
        raise FleetQueryError(unknown[0], f"unknown query parameter {unknown[0]!r} (filters: {', '.join(FLEET_FILTERS)})")
    filters = {name: query[name] for name in ("city", "isp", "state", "version") if query.get(name)}
    if "state" in filters and filters["state"] not in STATES:
        raise FleetQueryError("state", f"state is one of {', '.join(STATES)}, got {filters['state'][:40]!r}")
    stale_after = DEFAULT_STALE_AFTER_SECONDS
    if query.get("stale_after"):
        try:
            stale_after = float(query["stale_after"])
        except ValueError:
            stale_after = -1.0
        if not 0 < stale_after <= _MAX_STALE_AFTER_SECONDS:  # also NaN
            raise FleetQueryError("stale_after", "stale_after is a number of seconds, more than 0 and at most a year")
    return filters, stale_after


def _state(entry: RegistryEntry, live: ProbeLive | None, horizon_ns: int) -> State:
    if entry.state == "revoked":
        return "revoked"
    if live is None:
        return "never"
    return "stale" if live.last_seen_ns < horizon_ns else "ok"


def fleet(entries: Iterable[RegistryEntry], live: Mapping[str, ProbeLive], now_ns: int,
          filters: Mapping[str, str], stale_after_seconds: float, freshness: PlanFreshness | None = None) -> ProbesResponse:
    """The listing of the registered probes that match `filters`, by id, with a count per state."""
    horizon_ns = now_ns - round(stale_after_seconds * 1e9)
    listed: list[FleetProbe] = []
    for entry in sorted(entries, key=lambda e: e.id):
        seen = live.get(entry.id)
        stats = seen.stats if seen is not None else {}
        synced = stats.get("clock_synced")
        outdated = freshness.outdated_seconds(entry.id, seen, now_ns) if freshness is not None and seen is not None else None
        probe = FleetProbe(
            id=entry.id,
            city=entry.city or (seen.city if seen is not None else ""),
            isp=entry.isp or (seen.isp if seen is not None else ""),
            source=entry.source,
            state=_state(entry, seen, horizon_ns),
            last_seen_ns=seen.last_seen_ns if seen is not None else None,
            spool_backlog=stats.get("spool_backlog"),
            spool_dropped_total=stats.get("spool_dropped_total"),
            labels=dict(seen.labels) if seen is not None else {},
            version=(seen.version if seen is not None else "") or None,
            plan=(seen.plan if seen is not None else "") or None,
            plan_outdated_seconds=outdated,
            uptime_seconds=stats.get("uptime_seconds"),
            clock_synced=None if synced is None else synced >= 1.0,
        )
        if all(getattr(probe, name) == value for name, value in filters.items()):
            listed.append(probe)
    counts: dict[str, int] = {state: sum(p.state == state for p in listed) for state in STATES}
    return ProbesResponse(probes=listed, counts=counts, stale_after_seconds=stale_after_seconds)
