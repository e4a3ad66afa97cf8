"""Loss accuracy: at 0, 1, 5 and 20 % set loss and 1000 packets our loss ratio lies in the binomial 95 %
interval around the set rate, equals the loss that really happened, and agrees with fping's; duplicated
and late replies from the relay are counted apart, never as loss or as extra replies.

The set loss is realized exactly: p × 1000 packet positions drawn at random from a fixed seed, dropped
by nftables as they pass (`numgen inc`), once on our link and once, identically, on fping's. Every run
loses the same packets, so the truth is known to the packet and the test cannot fail by chance.
nftables' own `numgen random` is checked too: there the drops it counts must equal ours plus fping's,
whatever their number.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.helpers import require_tool
from tests.netlab.conftest import PREFIX, fping_samples, probe_once, require_lab_tools
from tests.netlab.lab import Lab, Netns, drop_pattern, drop_random, dropped_packets
from tests.netlab.relay import B_TO_A, RelaySettings, echo_trips

PERCENTS = (0.0, 1.0, 5.0, 20.0)
COUNT = 1000
OURS_INTERVAL, FPING_INTERVAL = 0.005, 0.01  # fping keeps at least 10 ms between packets to one target
TIMEOUT = 0.5
RANDOM_PERCENT = 5.0
IMPAIRED = RelaySettings(delay=0.001, duplicate=0.1, late=0.05, late_hold=0.4, impaired=(B_TO_A,), seed=7)
IMPAIRED_COUNT, IMPAIRED_TIMEOUT = 500, 0.25


def binomial_interval(n: int, p: float, confidence: float = 0.95) -> tuple[int, int]:
    """The central `confidence` interval of a Binomial(n, p) count: [lo, hi] holds at least that share."""
    tail = (1 - confidence) / 2
    cumulative, lo, hi = 0.0, None, n
    for k in range(n + 1):
        cumulative += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if lo is None and cumulative > tail - 1e-12:
            lo = k
        if cumulative >= 1 - tail - 1e-12:
            hi = k
            break
    return (lo or 0), hi


def loss_pattern(percent: float, count: int = COUNT) -> list[int]:
    """`percent` % of `count` positions, drawn at random from a fixed seed: the set rate, realized exactly."""
    draw = random.Random(f"qiancheng-loss-{percent}")
    return sorted(draw.sample(range(count), round(count * percent / 100)))


@dataclass(frozen=True)
class LossRun:
    percent: float
    truth_lost: int  # packets the pattern drops
    ours: dict[str, Any]  # our result
    fping_lost: int
    ours_dropped: int  # nftables' count on our link
    fping_dropped: int


@dataclass(frozen=True)
class RandomLossRun:
    ours: dict[str, Any]
    fping_lost: int
    dropped: int


@dataclass(frozen=True)
class ImpairedRun:
    ours: dict[str, Any]
    late: int  # requests whose first reply came after the timeout, before the train ended
    late_requests: int  # requests with no reply within the timeout (late or never seen)
    duplicates: int  # further copies of a reply, in time or late
    ambiguous: int  # copies written within 2 ms of the train's end (the probe may or may not see them)


def _all_at_once(calls: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def guarded(call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _ours(ns: Netns, address: str, count: int, timeout: float) -> dict[str, Any]:
    return probe_once(ns, "icmp", address, "--count", str(count), "--packet-interval", f"{OURS_INTERVAL * 1e3:g}ms",
                      "--timeout", f"{timeout * 1e3:g}ms")


def _fping_lost(ns: Netns, address: str, count: int) -> int:
    samples = fping_samples(ns, address, count, FPING_INTERVAL * 1e3, timeout_ms=TIMEOUT * 1e3)
    assert len(samples) == count
    return sum(s is None for s in samples)


def measure_loss(lab: Lab, percents: tuple[float, ...] = PERCENTS) -> tuple[list[LossRun], RandomLossRun]:
    """Our trains and fping's at each set loss (each tool on its own link, same pattern), and both on one
    link with nftables' random loss; everything at once."""
    pairs: dict[tuple[float, str], tuple[Netns, Netns, str]] = {}
    for i, percent in enumerate(percents):
        for tool in ("ours", "fping"):
            client, server = lab.namespace(f"l{i}{tool[0]}c"), lab.namespace(f"l{i}{tool[0]}s")
            link = lab.link(client, server)
            drop_pattern(server, loss_pattern(percent), COUNT, direction="in")  # requests are lost
            pairs[percent, tool] = (client, server, link.b_addr)
    random_client, random_server = lab.namespace("rndc"), lab.namespace("rnds")
    random_link = lab.link(random_client, random_server)
    drop_random(random_server, RANDOM_PERCENT, direction="in")

    outcome: dict[Any, Any] = {}

    def ours(percent: float) -> Callable[[], None]:
        client, _, address = pairs[percent, "ours"]
        return lambda: outcome.__setitem__((percent, "ours"), _ours(client, address, COUNT, TIMEOUT))

    def fping(percent: float) -> Callable[[], None]:
        client, _, address = pairs[percent, "fping"]
        return lambda: outcome.__setitem__((percent, "fping"), _fping_lost(client, address, COUNT))

    calls = [make(p) for p in percents for make in (ours, fping)]
    calls.append(lambda: outcome.__setitem__("random ours", _ours(random_client, random_link.b_addr, COUNT, TIMEOUT)))
    calls.append(lambda: outcome.__setitem__("random fping", _fping_lost(random_client, random_link.b_addr, COUNT)))
    _all_at_once(calls)
    runs = [
        LossRun(p, len(loss_pattern(p)), outcome[p, "ours"], outcome[p, "fping"],
                dropped_packets(pairs[p, "ours"][1], "ip"), dropped_packets(pairs[p, "fping"][1], "ip"))
        for p in percents
    ]
    return runs, RandomLossRun(outcome["random ours"], outcome["random fping"], dropped_packets(random_server, "ip"))


def measure_impaired(lab: Lab) -> ImpairedRun:
    """Our train through a relay that duplicates 10 % of replies and holds 5 % beyond the timeout."""
    link = lab.delayed_link(lab.namespace("impc"), lab.namespace("imps"), IMPAIRED)
    ours = _ours(link.a, link.b_addr, IMPAIRED_COUNT, IMPAIRED_TIMEOUT)
    records = [r for r in link.log() if r.protocol == "icmp"]
    [trips] = echo_trips(records).values()
    replies: dict[int, list[int]] = {}
    for record in records:
        if record.direction == B_TO_A and record.kind == 0:
            replies.setdefault(record.sequence, []).append(record.release_ns)
    # The probe listens until its last request's timeout; a copy written after that is never seen.
    end_ns = trips[-1].arrival_ns + round(IMPAIRED_TIMEOUT * 1e9)
    # As the probe counts (probes/measure/icmp.py): a request's first reply is received or, after the
    # timeout, late (the request is lost); every further copy is a duplicate.
    late = late_requests = duplicates = ambiguous = 0
    for trip in trips:
        seen = [r for r in sorted(replies.get(trip.sequence, [])) if r <= end_ns]
        ambiguous += sum(abs(r - end_ns) < 2_000_000 for r in replies.get(trip.sequence, []))
        if not seen or seen[0] - trip.arrival_ns > IMPAIRED_TIMEOUT * 1e9:
            late_requests += 1
            late += bool(seen)
        duplicates += max(0, len(seen) - 1)
    return ImpairedRun(ours, late, late_requests, duplicates, ambiguous)


@pytest.fixture(scope="module")
def loss_runs() -> Iterator[tuple[list[LossRun], RandomLossRun]]:
    require_lab_tools()
    require_tool("fping")
    with Lab(PREFIX) as lab:
        yield measure_loss(lab)


@pytest.mark.parametrize("percent", PERCENTS, ids=[f"{p:g}%" for p in PERCENTS])
def test_loss_is_exact_inside_the_binomial_interval_and_agrees_with_fping(
        loss_runs: tuple[list[LossRun], RandomLossRun], percent: float) -> None:
    [run] = [r for r in loss_runs[0] if r.percent == percent]
    figures = run.ours["figures"]
    lo, hi = binomial_interval(COUNT, percent / 100)
    assert run.truth_lost == round(COUNT * percent / 100)
    assert run.ours_dropped == run.truth_lost and run.fping_dropped == run.truth_lost  # nftables did as told
    assert figures["packets_sent"] == COUNT
    assert figures["packets_lost"] == run.truth_lost, (figures["packets_lost"], run.truth_lost)
    assert lo / COUNT <= figures["loss_ratio"] <= hi / COUNT
    assert figures["loss_ratio"] == pytest.approx(run.truth_lost / COUNT)
    assert run.fping_lost == run.truth_lost  # so fping agrees with us, within the interval and exactly
    assert figures["duplicates"] == 0 and figures["late"] == 0
    assert sum(s is None for s in run.ours["samples"]) == run.truth_lost


def test_random_loss_is_counted_exactly(loss_runs: tuple[list[LossRun], RandomLossRun]) -> None:
    run = loss_runs[1]
    ours_lost = int(run.ours["figures"]["packets_lost"])
    assert ours_lost + run.fping_lost == run.dropped, (ours_lost, run.fping_lost, run.dropped)
    assert ours_lost > 0 and run.fping_lost > 0


def test_duplicates_and_late_replies_are_counted_apart() -> None:
    require_lab_tools()
    with Lab(PREFIX) as lab:
        run = measure_impaired(lab)
    figures = run.ours["figures"]
    assert run.duplicates > 0 and run.late > 0, "the relay impaired nothing: the test would prove nothing"
    assert abs(figures["duplicates"] - run.duplicates) <= run.ambiguous, (figures["duplicates"], run.duplicates)
    assert abs(figures["late"] - run.late) <= run.ambiguous, (figures["late"], run.late, run.ambiguous)
    # A late reply's request is lost (RFC 7680), once; neither copies nor late replies add to what was received.
    assert figures["packets_lost"] == run.late_requests
    assert figures["packets_received"] == IMPAIRED_COUNT - run.late_requests
    assert sum(s is not None for s in run.ours["samples"]) == figures["packets_received"]
