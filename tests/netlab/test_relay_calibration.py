"""The delay relay measured against its own settings: how much it adds to the set delay and how much that
varies, at 0, 5, 20 and 60 ms of set round-trip delay, and that its distributions, ordering, duplicates
and late packets are what was asked. Every accuracy test takes its truth from the relay's log; this is
why that log can be trusted."""

from __future__ import annotations

import math
import re
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from qiancheng.core.stats import percentile
from tests.integration.helpers import require_tool
from tests.netlab.conftest import PREFIX, require_lab_tools
from tests.netlab.lab import Lab
from tests.netlab.relay import A_TO_B, B_TO_A, RelayRecord, RelaySettings, echo_trips

DELAYS = (0.0, 0.005, 0.02, 0.06)  # set round-trip delay; each direction holds half of it
PINGS, PING_INTERVAL = 300, 0.01
FAST_INTERVAL = 0.002  # closer than the drawn holds differ, so packets could overtake each other
# Datagrams to the discard port at a fixed pace; nothing needs to listen, the relay logs them on the way.
_UDP_SENDER = """
import socket, sys, time
address, count, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock, start = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), time.monotonic()
for i in range(count):
    time.sleep(max(0.0, start + i * gap - time.monotonic()))
    sock.sendto(i.to_bytes(4, "big"), (address, 9))
"""
DISTRIBUTED = {
    "uniform": RelaySettings(delay=0.005, distribution="uniform", spread=0.002, reorder=True, seed=1),
    "normal": RelaySettings(delay=0.005, distribution="normal", spread=0.001, reorder=True, seed=2),
    "fifo": RelaySettings(delay=0.005, distribution="uniform", spread=0.0025, reorder=False, seed=3),
    "reorder": RelaySettings(delay=0.005, distribution="uniform", spread=0.0025, reorder=True, seed=4),
    "impaired": RelaySettings(delay=0.001, duplicate=0.2, late=0.1, late_hold=0.3, impaired=(B_TO_A,), seed=5),
}


@dataclass(frozen=True)
class Run:
    settings: RelaySettings
    records: list[RelayRecord]
    ping_samples: list[float]  # iputils ping's RTTs, seconds

    def hold_errors(self) -> list[float]:
        """Each packet's hold beyond its set one-way delay (late packets and duplicates aside), seconds."""
        return [r.hold_seconds - self.settings.delay for r in self.records if r.protocol == "icmp" and not r.late]

    def spans(self) -> list[float]:
        return [t.span_seconds for trips in echo_trips(self.records).values() for t in trips if t.span_seconds is not None]


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, Run]]:
    require_lab_tools()
    ping = require_tool("ping")
    settings = {f"{d * 1e3:g}ms": RelaySettings(delay=d / 2) for d in DELAYS} | DISTRIBUTED
    with Lab(PREFIX) as lab:
        links = {name: lab.delayed_link(lab.namespace(f"c{i}"), lab.namespace(f"s{i}"), s)
                 for i, (name, s) in enumerate(settings.items())}
        outputs: dict[str, str] = {}
        # ping and fping pace themselves at 10 ms or more: the ordering links get UDP 2 ms apart instead,
        # both ways
        senders = [ns.popen(sys.executable, "-c", _UDP_SENDER, peer, str(PINGS), str(FAST_INTERVAL))
                   for name in ("fifo", "reorder")
                   for ns, peer in ((links[name].a, links[name].b_addr), (links[name].b, links[name].a_addr))]

        def traffic(name: str) -> None:
            link = links[name]
            # -W 1: wait long enough that late replies (held 0.3 s) are still printed
            done = link.a.run(ping, "-c", str(PINGS), "-i", f"{PING_INTERVAL}", "-W", "1", link.b_addr, check=False)
            outputs[name] = done.stdout

        threads = [threading.Thread(target=traffic, args=(name,)) for name in links if name not in ("fifo", "reorder")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for sender in senders:
            sender.wait(timeout=30)
        time.sleep(0.1)  # the last datagrams' holds (<= 7.5 ms) have passed
        yield {
            name: Run(settings[name], link.log(), [float(v) / 1e3 for v in re.findall(r"time=([\d.]+) ms", outputs.get(name, ""))])
            for name, link in links.items()
        }


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:7.1f} µs"


def test_report(runs: dict[str, Run], capsys: pytest.CaptureFixture[str]) -> None:
    """The calibration table: what the relay adds to each set delay, and its spread."""
    zero = runs["0ms"]
    outside = statistics.median(zero.ping_samples) - statistics.median(zero.spans())
    with capsys.disabled():
        print("\nrelay calibration (hold error = release − arrival − set one-way delay; span = RTT inside the relay)")
        for delay in DELAYS:
            run = runs[f"{delay * 1e3:g}ms"]
            errors, spans = run.hold_errors(), run.spans()
            print(f"  set {delay * 1e3:4g} ms: hold error median {_us(statistics.median(errors))} "
                  f"sd {_us(statistics.pstdev(errors))} p99 {_us(percentile(errors, 99))}; "
                  f"span − set median {_us(statistics.median(spans) - delay)} sd {_us(statistics.pstdev(spans))}")
        print(f"  outside the relay's view at 0 ms (ping median − span median): {_us(outside)}")
    assert 0 <= outside < 0.2e-3, outside


@pytest.mark.parametrize("delay", DELAYS, ids=[f"{d * 1e3:g}ms" for d in DELAYS])
def test_holds_are_never_early_and_precise(runs: dict[str, Run], delay: float) -> None:
    errors = runs[f"{delay * 1e3:g}ms"].hold_errors()
    assert len(errors) >= 2 * PINGS
    assert min(errors) >= 0, "a packet was released before its time"
    assert statistics.median(errors) <= 0.1e-3, statistics.median(errors)
    assert percentile(errors, 99) <= 1e-3, percentile(errors, 99)


def test_round_trip_adds_a_constant_to_the_set_delay(runs: dict[str, Run]) -> None:
    """span − set delay is the same at every delay (within 0.1 ms): the relay's cost does not grow with it."""
    added = {d: statistics.median(runs[f"{d * 1e3:g}ms"].spans()) - d for d in DELAYS}
    assert all(0 <= a < 0.3e-3 for a in added.values()), added
    assert max(added.values()) - min(added.values()) <= 0.1e-3, added


@pytest.mark.parametrize(("name", "sd"), [("uniform", 0.002 / math.sqrt(3)), ("normal", 0.001)])
def test_drawn_holds_follow_their_distribution(runs: dict[str, Run], name: str, sd: float) -> None:
    run = runs[name]
    holds = [r.hold_seconds for r in run.records if r.protocol == "icmp"]
    # the relay's own precision (0.1 ms) plus four standard errors of a mean of this many draws
    allowed = 0.1e-3 + 4 * sd / math.sqrt(len(holds))
    assert abs(statistics.mean(holds) - run.settings.delay) <= allowed, statistics.mean(holds)
    assert abs(statistics.pstdev(holds) - sd) <= 0.1 * sd, statistics.pstdev(holds)


def _overtaken(records: list[RelayRecord], direction: str) -> int:
    """Datagrams of a direction released before one that arrived earlier."""
    ordered = sorted((r for r in records if r.direction == direction and r.protocol == "udp" and r.copy == 0),
                     key=lambda r: r.arrival_ns)
    latest, count = 0, 0
    for record in ordered:
        if record.release_ns < latest:
            count += 1
        latest = max(latest, record.release_ns)
    return count


def test_without_reordering_order_is_kept_and_with_it_packets_overtake(runs: dict[str, Run]) -> None:
    # Datagrams 2 ms apart, holds drawn from 2.5..7.5 ms: with reordering, many must overtake.
    for direction in (A_TO_B, B_TO_A):
        assert _overtaken(runs["fifo"].records, direction) == 0
        assert _overtaken(runs["reorder"].records, direction) >= PINGS // 10


def test_duplicates_and_late_packets_follow_their_shares(runs: dict[str, Run]) -> None:
    run = runs["impaired"]
    replies = [r for r in run.records if r.direction == B_TO_A and r.protocol == "icmp"]
    originals = [r for r in replies if r.copy == 0]
    duplicates = [r for r in replies if r.copy == 1]
    late = [r for r in originals if r.late]
    n = len(originals)
    for observed, share in ((len(duplicates), 0.2), (len(late), 0.1)):
        assert abs(observed - n * share) <= 4 * math.sqrt(n * share * (1 - share)), (observed, n, share)
    assert all(r.hold_seconds >= 0.3 for r in late)
    requests = [r for r in run.records if r.direction == A_TO_B and r.protocol == "icmp"]
    assert not any(r.copy or r.late for r in requests), "only the impaired direction is touched"
