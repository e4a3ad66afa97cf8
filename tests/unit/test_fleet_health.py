"""Fleet health, piece by piece: the box's figures a probe adds to its batches (the clock state read as
the kernel gives it, checked against a C program calling adjtimex), the software headers the collector
reads, how long a probe has run an outdated plan, and what /metrics and the fleet listing show of it."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from qiancheng.collector.fleet import fleet, parse_query
from qiancheng.collector.live import ProbeLive
from qiancheng.collector.metrics import build_registry, new_live_state
from qiancheng.collector.plan.freshness import PlanFreshness
from qiancheng.collector.plan.model import Member
from qiancheng.collector.records import RegistryEntry
from qiancheng.collector.refused import Refused
from qiancheng.collector.software import probe_software
from qiancheng.core import __version__
from qiancheng.probes import health
from qiancheng.probes.health import HostHealth, clock_state

NOW = 1_800_000_000_000_000_000
S = 10**9
V1, V2 = "0123456789abcdef", "fedcba9876543210"

_TIMEX_PEER = r"""
#include <stdio.h>
#include <sys/timex.h>
int main(void) {
    struct timex t = {0};
    int state = adjtimex(&t);
    printf("%zu %d %d %ld\n", sizeof(struct timex), state, (t.status & STA_UNSYNC) != 0, t.maxerror);
    return state < 0;
}
"""


def test_the_clock_state_is_what_adjtimex_gives_a_c_program(tmp_path: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the adjtimex peer")
    source, binary = tmp_path / "timex.c", tmp_path / "timex"
    source.write_text(_TIMEX_PEER)
    subprocess.run([compiler, "-O0", "-o", str(binary), str(source)], check=True, capture_output=True, timeout=60)
    before = clock_state()
    size, state, unsync, maxerror_us = (int(word) for word in subprocess.run(
        [str(binary)], check=True, capture_output=True, text=True, timeout=10).stdout.split())  # fmt: skip
    after = clock_state()
    assert before is not None and after is not None
    assert size == ctypes.sizeof(health._Timex), "struct timex laid out as the C headers say"
    assert before.synced == after.synced == (state != 5 and not unsync)
    # maxerror grows by 500 ppm while nothing disciplines the clock (capped at 16 s): read between the two
    assert before.maxerror_seconds - 1e-3 <= maxerror_us / 1e6 <= after.maxerror_seconds + 1e-3


def test_a_batch_carries_uptime_load_cpus_and_the_clock() -> None:
    now = [100.0]
    figures = HostHealth(monotonic=lambda: now[0])
    now[0] = 142.5
    stats = figures.stats()
    clock = clock_state()
    assert stats["uptime_seconds"] == 42.5
    assert stats["cpus"] == len(os.sched_getaffinity(0))
    assert abs(stats["load1"] - os.getloadavg()[0]) < 1.0
    assert clock is not None and stats["clock_synced"] == float(clock.synced)
    assert abs(stats["clock_maxerror_seconds"] - clock.maxerror_seconds) < 1e-2
    assert all(isinstance(value, float) and value >= 0 for value in stats.values()), "what Batch.stats takes"


def _headers(**values: str) -> CIMultiDictProxy[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in values.items():
        headers.add(name.replace("_", "-"), value)
    return CIMultiDictProxy(headers)


def test_the_collector_reads_the_version_from_the_user_agent_and_the_plan_from_its_header() -> None:
    assert probe_software(_headers(User_Agent=f"qiancheng-probe/{__version__}", Qiancheng_Plan=V1)) == (__version__, V1)
    assert probe_software(_headers(User_Agent="qiancheng-probe/1.2.0rc1 (armv7l)")) == ("1.2.0rc1", "")
    assert probe_software(_headers(User_Agent="curl/8.5.0")) == ("", "")
    assert probe_software(_headers(User_Agent="qiancheng-probe/" + "9" * 40)) == ("", ""), "not a version: dropped"
    assert probe_software(_headers()) == ("", "")
    for bad in ("0123456789ABCDEF", "0123", V1 + "\n", "zzzzzzzzzzzzzzzz"):
        with pytest.raises(Refused) as refused:
            probe_software(_headers(Qiancheng_Plan=bad))
        assert (refused.value.status, refused.value.field) == (400, "Qiancheng-Plan")
    twice: CIMultiDict[str] = CIMultiDict([("Qiancheng-Plan", V1), ("Qiancheng-Plan", V2)])
    with pytest.raises(Refused):
        probe_software(CIMultiDictProxy(twice))


def _live(plan: str, version: str = "0.1.0", stats: dict[str, float] | None = None) -> ProbeLive:
    return ProbeLive(city="lishui", isp="chinatelecom", labels={"access": "ftth"}, stats=stats or {}, last_seen_ns=NOW,
                     version=version, plan=plan)  # fmt: skip


def test_an_outdated_plan_is_timed_from_when_the_collector_first_saw_it() -> None:
    current = {"version": V1}
    asked: list[Member] = []

    def expected(member: Member) -> str | None:
        asked.append(member)
        return current["version"]

    freshness = PlanFreshness()
    assert freshness.outdated_seconds("p1", _live(V1), NOW) is None, "no plan served by this collector"
    freshness.expected = expected
    assert freshness.outdated_seconds("p1", _live(""), NOW) is None, "a probe with no central plan"
    assert freshness.outdated_seconds("p1", _live(V1), NOW) == 0.0
    assert asked[-1] == Member("p1", "lishui", "chinatelecom", (("access", "ftth"),))
    current["version"] = V2  # plan.yaml changed
    assert freshness.outdated_seconds("p1", _live(V1), NOW + 5 * S) == 0.0  # first seen behind now
    assert freshness.outdated_seconds("p1", _live(V1), NOW + 65 * S) == 60.0
    current["version"] = None  # no plan can be made for it any more (a 422): still behind, same clock
    assert freshness.outdated_seconds("p1", _live(V1), NOW + 125 * S) == 120.0
    current["version"] = V2
    assert freshness.outdated_seconds("p1", _live(V2), NOW + 130 * S) == 0.0
    assert freshness.outdated_seconds("p1", _live(V1), NOW + 140 * S) == 0.0, "the clock starts again"


def test_metrics_show_version_plan_health_and_how_long_a_plan_is_outdated() -> None:
    state = new_live_state()
    stats = {"uptime_seconds": 3600.0, "load1": 0.42, "cpus": 4.0, "clock_synced": 0.0, "clock_maxerror_seconds": 16.0}
    state.saw_probe("p1", "lishui", "chinatelecom", {"access": "ftth", "version": "clash"}, stats, NOW, "0.1.0", V1)
    state.saw_probe("p2", "quzhou", "chinamobile", {}, {}, NOW)  # an older probe: no health, no plan
    freshness = PlanFreshness()
    freshness.expected = lambda member: V2
    clock = [NOW]
    registry = build_registry(state, clock=lambda: clock[0], process=False, freshness=freshness)
    one = {"probe": "p1", "city": "lishui", "isp": "chinatelecom"}
    two = {"probe": "p2", "city": "quzhou", "isp": "chinamobile"}
    assert registry.get_sample_value("qiancheng_probe_info", {**one, "version": "0.1.0", "plan": V1, "access": "ftth"}) == 1
    assert registry.get_sample_value("qiancheng_probe_info", two) == 1, "no empty version or plan label"
    for metric, stat in (("uptime_seconds", "uptime_seconds"), ("load1", "load1"), ("cpus", "cpus"),
                         ("clock_synced", "clock_synced"), ("clock_maxerror_seconds", "clock_maxerror_seconds")):  # fmt: skip
        assert registry.get_sample_value(f"qiancheng_probe_{metric}", one) == stats[stat]
        assert registry.get_sample_value(f"qiancheng_probe_{metric}", two) is None
    assert registry.get_sample_value("qiancheng_probe_plan_outdated_seconds", one) == 0.0
    clock[0] = NOW + 90 * S
    assert registry.get_sample_value("qiancheng_probe_plan_outdated_seconds", one) == 90.0
    assert registry.get_sample_value("qiancheng_probe_plan_outdated_seconds", two) is None


def test_the_fleet_listing_shows_health_and_filters_by_version() -> None:
    entries = [RegistryEntry(p, "", "", "config", "active", "h-" + p, None, None, NOW, NOW) for p in ("p1", "p2", "p3")]
    live = {"p1": _live(V1, stats={"uptime_seconds": 60.0, "clock_synced": 1.0}), "p2": _live("", version="0.0.9")}
    freshness = PlanFreshness()
    freshness.expected = lambda member: V2
    listing = fleet(entries, live, NOW, {}, 300.0, freshness)
    one, two, three = listing.probes
    assert (one.version, one.plan, one.plan_outdated_seconds, one.uptime_seconds, one.clock_synced) == ("0.1.0", V1, 0.0, 60.0, True)
    assert (two.version, two.plan, two.plan_outdated_seconds, two.uptime_seconds, two.clock_synced) == ("0.0.9", None, None, None, None)
    assert (three.version, three.plan, three.state) == (None, None, "never")
    filters, _ = parse_query({"version": "0.0.9"})
    assert [p.id for p in fleet(entries, live, NOW, filters, 300.0, freshness).probes] == ["p2"]
