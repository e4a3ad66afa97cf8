"""Blaming a breach on a hop: delay that starts at a hop, loss that starts and persists, a destination that
stopped answering, the segments, and what is never blamed (rate limiting, no rise, no baseline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qiancheng.collector.records import SeriesKey, StoredResult
from qiancheng.collector.sla.blame import Blamer, blame
from qiancheng.collector.sla.breach import BreachState
from qiancheng.collector.sla.judge import Judgement
from qiancheng.collector.sla.profiles import load_sla_profiles
from qiancheng.core.result import Hop, Result, Target

T0 = 1_790_000_000_000_000_000
S = 1_000_000_000
ADDRESSES = ["198.18.0.2", "198.18.0.6", "198.18.0.10", "198.18.0.14", "198.18.0.18", "198.18.0.22"]


def trace(rtts: list[float | None], losses: list[float] | None = None, start_ns: int = T0, reached: bool = True,
          rate_limited: frozenset[int] = frozenset(), addresses: list[str] | None = None) -> Result:
    """A path result of len(rtts) hops (TTL 1..n), with these medians and losses."""
    losses = losses or [0.0] * len(rtts)
    addresses = addresses or ADDRESSES
    hops = [Hop(ttl=ttl, sent=10, received=round(10 * (1 - loss)), loss_ratio=loss, address=addresses[ttl - 1],
                rtt_median_seconds=rtt, rate_limited=ttl in rate_limited)
            for ttl, (rtt, loss) in enumerate(zip(rtts, losses), 1)]  # fmt: skip
    return Result(kind="path", target=Target(name="pool", address=ADDRESSES[len(rtts) - 1]), start_ns=start_ns,
                  duration_seconds=10.0, success=reached, figures={"destination_reached": float(reached)}, hops=hops)


BASE = trace([0.001, 0.002, 0.003, 0.004, 0.005, 0.006])


def test_delay_is_blamed_on_the_first_hop_carrying_most_of_the_rise() -> None:
    # 10 ms added between hop 3 and hop 4 (both ways): hops 4-6 rise by 10 ms, 1-3 not at all
    found = blame(BASE, trace([0.001, 0.002, 0.0031, 0.014, 0.015, 0.016], start_ns=T0 + 600 * S))
    assert found is not None
    assert (found.hop, found.address, found.reason, found.segment) == (4, "198.18.0.14", "rtt", "transit")
    assert found.hop_rise == pytest.approx(0.010) and found.end_to_end_rise == pytest.approx(0.010)
    assert (found.hops, found.baseline_start_ns, found.now_start_ns) == (6, T0, T0 + 600 * S)
    # a hop that rose by less than the share of the end-to-end rise is not yet the one
    found = blame(BASE, trace([0.001, 0.005, 0.006, 0.014, 0.015, 0.016]), share=0.5)
    assert found is not None and found.hop == 4
    found = blame(BASE, trace([0.001, 0.005, 0.006, 0.014, 0.015, 0.016]), share=0.2)
    assert found is not None and (found.hop, found.segment) == (2, "probe_side")


def test_segments_follow_the_edge_hops() -> None:
    for ttl, segment in ((1, "probe_side"), (2, "probe_side"), (3, "transit"), (4, "transit"), (5, "target_side"),
                         (6, "target_side")):  # fmt: skip
        rtts: list[float | None] = [0.001 * t + (0.02 if t >= ttl else 0.0) for t in range(1, 7)]
        found = blame(BASE, trace(rtts), edge_hops=2)
        assert found is not None and (found.hop, found.segment) == (ttl, segment)
    found = blame(BASE, trace([0.001, 0.002, 0.023, 0.024, 0.025, 0.026]), edge_hops=0)
    assert found is not None and found.segment == "transit"


def test_loss_is_blamed_where_it_starts_and_persists() -> None:
    # hop 2 limits its replies (rate limiting, 60 %), loss from hop 4 on is the path's (30 %)
    lossy = trace([0.001, 0.002, 0.003, 0.004, 0.005, 0.006], [0.0, 0.6, 0.0, 0.3, 0.2, 0.3], rate_limited=frozenset({2}))
    found = blame(BASE, lossy)
    assert found is not None and (found.hop, found.reason, found.segment) == (4, "loss", "transit")
    assert found.end_to_end_rise == pytest.approx(0.3) and found.hop_rise == pytest.approx(0.3)


def test_a_destination_that_stopped_answering_is_blamed_after_the_last_hop() -> None:
    broken = trace([0.001, 0.002, 0.003], reached=False)
    found = blame(BASE, broken)
    assert found is not None
    assert (found.hop, found.address, found.previous_address, found.reason) == (4, None, "198.18.0.14", "loss")
    assert (found.segment, found.hops) == ("transit", 6)


def test_a_changed_hop_names_its_old_address() -> None:
    moved = trace([0.001, 0.012, 0.013, 0.014, 0.015, 0.016],
                  addresses=["198.18.0.2", "198.18.0.30", *ADDRESSES[2:]])  # fmt: skip
    found = blame(BASE, moved)
    assert found is not None and (found.hop, found.address, found.previous_address) == (2, "198.18.0.30", "198.18.0.6")


def test_nothing_is_blamed_without_a_rise() -> None:
    assert blame(BASE, trace([0.001, 0.002, 0.003, 0.004, 0.005, 0.0062])) is None  # 0.2 ms: noise
    assert blame(BASE, trace([0.001, 0.002, 0.003, 0.004, 0.005, 0.006], [0.0, 0.7, 0.0, 0.0, 0.0, 0.0])) is None
    assert blame(trace([]), BASE) is None


class History:
    def __init__(self, results: list[Result]) -> None:
        self.results = results
        self.asked: list[int] = []

    async def path_before(self, probe_id: str, target: str, before_ns: int) -> StoredResult | None:
        self.asked.append(before_ns)
        earlier = [r for r in self.results if r.start_ns < before_ns]
        return StoredResult("p1", "lishui", "ct", 0, max(earlier, key=lambda r: r.start_ns)) if earlier else None


PROFILES = load_sla_profiles(Path(__file__).resolve().parents[2] / "configs" / "sla.yaml")


def judgement(status: str, since_ns: int) -> Judgement:
    profile = PROFILES.profiles["regional_cloud"]
    key = SeriesKey("p1", "lishui", "ct", "pool", "cloud_pool", "icmp")
    return Judgement(key, profile, profile.objectives[0], (), BreachState(status, since_ns))  # type: ignore[arg-type]


async def test_the_blamer_compares_the_trace_before_the_trouble_with_one_since() -> None:
    slow = trace([0.001, 0.002, 0.0031, 0.014, 0.015, 0.016], start_ns=T0 + 900 * S)
    history = History([BASE])
    blamer = Blamer(history, judging_window_seconds=300)
    breach = judgement("breach", T0 + 1000 * S)
    await blamer.update([breach], T0 + 1000 * S)
    assert blamer.blame_of(breach) is None  # no trace since the trouble began (700 s): wait for one
    history.results.append(slow)
    await blamer.update([breach], T0 + 1060 * S)
    found = blamer.blame_of(breach)
    assert found is not None and found.hop == 4 and found.baseline_start_ns == T0
    asked = len(history.asked)
    await blamer.update([breach], T0 + 1120 * S)
    assert len(history.asked) == asked  # kept while the breach lasts, not looked up again
    closed = judgement("ok", T0 + 1200 * S)
    await blamer.update([closed], T0 + 1200 * S)
    assert blamer.blame_of(closed) is None and blamer.blame_of(breach) is None
