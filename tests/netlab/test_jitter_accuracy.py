"""Delay variation accuracy: with the relay drawing each packet's delay from a uniform or a normal
distribution, our IPDV (mean |IPDV|, RFC 3393) and PDV (99th percentile of delay − minimum, RFC 5481)
match the figures computed from the relay's own per-packet log within 10 %. fping's samples, taken on
an identical link in the same run, are put through the same formulas and their error printed beside
ours (fping prints RTTs of 10 ms and more to 0.1 ms, which alone adds several % to its IPDV).

The truth is computed here, independently of core/stats.py, from each packet's round trip inside the
relay's view (request read → reply written), in the order the requests were sent.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.helpers import require_tool
from tests.netlab.conftest import PREFIX, fping_samples, probe_once, require_lab_tools
from tests.netlab.lab import DelayedLink, Lab
from tests.netlab.relay import RelaySettings, echo_trips

SETTINGS = {
    "uniform": RelaySettings(delay=0.005, distribution="uniform", spread=0.002, seed=11),
    "normal": RelaySettings(delay=0.005, distribution="normal", spread=0.001, seed=12),
}
COUNT, INTERVAL = 500, 0.01  # 10 ms apart, holds within a few ms of each other: order is never at stake
TOLERANCE = 0.10  # the figure


def ipdv_mean_abs(delays: list[float]) -> float:
    """Mean absolute difference of consecutive delays (all packets arrived)."""
    return statistics.mean(abs(b - a) for a, b in zip(delays, delays[1:]))


def pdv_p99(delays: list[float]) -> float:
    """99th percentile of delay minus the minimum delay (linear interpolation between ranks)."""
    lowest = min(delays)
    return statistics.quantiles([d - lowest for d in delays], n=100, method="inclusive")[98]


def relative_error(measured: float, truth: float) -> float:
    return (measured - truth) / truth


@dataclass(frozen=True)
class JitterRun:
    name: str
    ours: dict[str, Any]
    truth: list[float]  # our packets' round trips in the relay's view, in send order
    fping: list[float | None]
    fping_truth: list[float]

    @property
    def fping_received(self) -> list[float]:
        return [s for s in self.fping if s is not None]


def _truth(link: DelayedLink) -> list[float]:
    [trips] = echo_trips([r for r in link.log() if r.protocol == "icmp"]).values()
    spans = [t.span_seconds for t in trips]
    assert all(s is not None for s in spans), "a packet was lost on a lossless link"
    return [s for s in spans if s is not None]


def measure_jitter(lab: Lab, settings: dict[str, RelaySettings] = SETTINGS, count: int = COUNT) -> list[JitterRun]:
    """For each distribution, our train and fping's, each on its own relay link with those settings, all at once."""
    links = {(name, tool): lab.delayed_link(lab.namespace(f"j{i}{tool[0]}c"), lab.namespace(f"j{i}{tool[0]}s"), s)
             for i, (name, s) in enumerate(settings.items()) for tool in ("ours", "fping")}
    outcome: dict[tuple[str, str], Any] = {}

    def run(name: str, tool: str) -> None:
        link = links[name, tool]
        if tool == "ours":
            outcome[name, tool] = probe_once(link.a, "icmp", link.b_addr, "--count", str(count),
                                             "--packet-interval", f"{INTERVAL * 1e3:g}ms", "--timeout", "1s")
        else:
            outcome[name, tool] = fping_samples(link.a, link.b_addr, count, INTERVAL * 1e3)

    threads = [threading.Thread(target=run, args=key) for key in links]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [JitterRun(name, outcome[name, "ours"], _truth(links[name, "ours"]), outcome[name, "fping"],
                      _truth(links[name, "fping"])) for name in settings]


@pytest.fixture(scope="module")
def jitter_runs() -> Iterator[dict[str, JitterRun]]:
    require_lab_tools()
    require_tool("fping")
    with Lab(PREFIX) as lab:
        yield {run.name: run for run in measure_jitter(lab)}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_ipdv_and_pdv_match_the_relay_log(jitter_runs: dict[str, JitterRun], name: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = jitter_runs[name]
    with capsys.disabled():
        print(f"\n{name}: IPDV error ours {relative_error(run.ours['figures']['jitter_seconds'], ipdv_mean_abs(run.truth)):+.1%}, "
              f"fping {relative_error(ipdv_mean_abs(run.fping_received), ipdv_mean_abs(run.fping_truth)):+.1%}; "
              f"PDV error ours {relative_error(run.ours['figures']['pdv_p99_seconds'], pdv_p99(run.truth)):+.1%}, "
              f"fping {relative_error(pdv_p99(run.fping_received), pdv_p99(run.fping_truth)):+.1%}")
    figures = run.ours["figures"]
    assert figures["packets_received"] == COUNT and len(run.truth) == COUNT
    truth_ipdv, truth_pdv = ipdv_mean_abs(run.truth), pdv_p99(run.truth)
    assert truth_ipdv > 1e-3, "the relay varied the delay too little for the test to mean anything"
    assert abs(figures["jitter_seconds"] - truth_ipdv) <= TOLERANCE * truth_ipdv, (figures["jitter_seconds"], truth_ipdv)
    assert abs(figures["pdv_p99_seconds"] - truth_pdv) <= TOLERANCE * truth_pdv, (figures["pdv_p99_seconds"], truth_pdv)
