"""The path kind on a routed chain (probe - r1 - r2 - r3 - target, r2b beside r2), both families: our hop
list is mtr's and traceroute's and the chain's truth, over ICMP, UDP and TCP; loss entering hop 2 shows
from hop 2 on and not before; a rate-limiting router is labelled so and its missing replies are not path
loss; delay on the r2-r3 link raises the RTT from hop 3 on; a route changed between traces is one path
change; with two equal-cost routes every flow keeps one hop list and the flows take both."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qiancheng.core.result import Result
from qiancheng.core.wire import Batch, encode_batch
from tests.conftest import PYTHON, Processes
from tests.integration.helpers import Collector, http_get
from tests.netlab.chain import Chain, build_chain, mtr_hops, traceroute_hops
from tests.netlab.conftest import probe_once
from tests.netlab.lab import Lab, drop_random
from tests.netlab.relay import RelaySettings

FAMILIES = ("ipv4", "ipv6")
TOKEN = "token-for-p1-0123456789abcdef"
PROTOCOLS = ("icmp", "udp", "tcp")


@pytest.fixture
def chain(lab: Lab) -> Chain:
    return build_chain(lab)


def trace(chain: Chain, family: str, *options: str) -> dict[str, Any]:
    return probe_once(chain.probe, "path", chain.target_address(family), *options)


def addresses(result: dict[str, Any], flow: int = 0) -> list[str | None]:
    return [hop.get("address") for hop in result["hops"] if hop.get("flow", 0) == flow]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hop_list_equals_mtr_and_traceroute(chain: Chain, family: str, protocol: str) -> None:
    ours = trace(chain, family, "--protocol", protocol, "--rounds", "5", "--round-interval", "100ms")
    mtr = mtr_hops(chain.probe, chain.target_address(family), protocol, cycles=5, family=family)
    traceroute = traceroute_hops(chain.probe, chain.target_address(family), protocol, family=family)
    truth = chain.hops(family)
    assert ours["success"], ours
    assert addresses(ours) == truth
    assert [hop.address for hop in mtr] == truth, mtr
    assert [hop.address for hop in traceroute] == truth, traceroute
    assert ours["figures"]["hop_count"] == len(truth)
    assert ours["figures"]["destination_reached"] == 1
    assert ours["figures"]["loss_ratio"] == 0
    assert all(hop["sent"] == hop["received"] == 5 for hop in ours["hops"])
    assert ours["info"]["protocol"] == protocol


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_entering_hop_two_shows_from_hop_two_on(chain: Chain, family: str) -> None:
    drop_random(chain.r2, 30, direction="in")  # probes into r2, and replies of hops 3 and 4 through it
    ours = trace(chain, family, "--protocol", "udp", "--rounds", "100", "--round-interval", "20ms")
    hops = ours["hops"]
    assert addresses(ours) == chain.hops(family)
    assert hops[0]["loss_ratio"] == 0, hops[0]
    for hop in hops[1:]:
        # 30 % at hop 2, 1 - 0.7² = 51 % beyond; of 100 probes at 30 %, fewer than 15 lost has odds of 3 in 10 000
        assert hop["loss_ratio"] >= 0.15, hop
    assert not any(hop.get("rate_limited") for hop in hops), hops
    assert ours["figures"]["loss_ratio"] == hops[-1]["loss_ratio"] > 0.3


@pytest.mark.parametrize("family", FAMILIES)
def test_rate_limiting_router_is_labelled_not_lossy(chain: Chain, family: str) -> None:
    chain.rate_limit(chain.r2, 1000)  # one time exceeded a second per destination after a burst of six
    ours = trace(chain, family, "--protocol", "icmp", "--rounds", "40", "--round-interval", "25ms")
    hops = ours["hops"]
    assert addresses(ours) == chain.hops(family)
    assert hops[1]["loss_ratio"] > 0.5 and hops[1]["received"] >= 1, hops[1]
    assert hops[1]["rate_limited"] is True
    assert [hop.get("rate_limited", False) for hop in hops] == [False, True, False, False]
    assert ours["figures"]["loss_ratio"] == 0
    assert ours["figures"]["rate_limited_hops"] == 1
    # mtr shows the same missing replies at hop 2 and none beyond: the router, not the path
    mtr = mtr_hops(chain.probe, chain.target_address(family), "icmp", cycles=40, interval=0.025, family=family)
    assert mtr[1].loss_ratio > 0.5 and mtr[-1].loss_ratio == 0, mtr


@pytest.mark.parametrize("family", FAMILIES)
def test_delay_after_hop_two_raises_rtt_from_hop_three(lab: Lab, family: str) -> None:
    chain = build_chain(lab, delay_r2_r3=RelaySettings(delay=0.005))
    ours = trace(chain, family, "--protocol", "icmp", "--rounds", "10", "--round-interval", "50ms")
    mtr = mtr_hops(chain.probe, chain.target_address(family), "icmp", cycles=10, interval=0.05, family=family)
    medians = [hop["rtt_median_seconds"] for hop in ours["hops"]]
    assert addresses(ours) == chain.hops(family)
    assert medians[0] < 0.002 and medians[1] < 0.002, medians
    for median, peer in zip(medians[2:], mtr[2:]):
        assert 0.0095 < median < 0.013, medians  # the relay holds 5 ms each way
        assert peer.average is not None and abs(median - peer.average) < 0.001, (medians, mtr)


# A probe process that traces the target once per line read on stdin and prints each result: path
# changes are remembered per process, as in the agent.
TRACER = """
import asyncio, sys
import msgspec
from qiancheng.core.kind_settings import PathSettings
from qiancheng.core.result import Target
from qiancheng.core.units import Duration
from qiancheng.probes.measure import run

settings = PathSettings(protocol=sys.argv[2], rounds=5, round_interval=Duration(0.05), flows=int(sys.argv[3]))
target = Target(name="target", address=sys.argv[1])
for line in sys.stdin:
    result = asyncio.run(run("path", target, settings))
    sys.stdout.write(msgspec.json.encode(result).decode() + "\\n")
    sys.stdout.flush()
"""


@pytest.fixture
def tracer(chain: Chain) -> Iterator[Any]:
    processes: list[subprocess.Popen[str]] = []

    def start(family: str, protocol: str = "icmp", flows: int = 1) -> Any:
        process = chain.probe.popen(PYTHON, "-c", TRACER, chain.target_address(family), protocol, str(flows),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        processes.append(process)  # type: ignore[arg-type]

        def once() -> dict[str, Any]:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write("trace\n")
            process.stdin.flush()
            line = process.stdout.readline()
            assert line, f"tracer exited with {process.wait()}"
            result: dict[str, Any] = json.loads(line)
            return result

        return once

    yield start
    for process in processes:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("family", FAMILIES)
def test_route_change_is_one_path_change(chain: Chain, tracer: Any, processes: Processes, tmp_path: Path,
                                         family: str) -> None:
    once = tracer(family)
    before = [once() for _ in range(2)]
    chain.use("r2b")
    after = [once() for _ in range(2)]
    changes = [result["figures"]["path_changes"] for result in before + after]
    assert changes == [0, 0, 1, 0], changes
    assert addresses(before[0]) == chain.hops(family, via="r2")
    assert addresses(after[0]) == chain.hops(family, via="r2b")
    assert after[0]["info"]["previous_fingerprint"] == before[1]["info"]["fingerprint"]
    assert after[0]["info"]["fingerprint"] != before[1]["info"]["fingerprint"]

    # the four traces, pushed as the agent pushes them, to a real collector on loopback
    collector = Collector(processes, tmp_path, tokens={"p1": TOKEN})
    collector.start()
    results = [msgspec.convert({**result, "seq": seq}, Result) for seq, result in enumerate(before + after, 1)]
    batch = Batch(probe_id="p1", batch_id="path-batch-1", city="lishui", isp="test-isp", results=results)
    request = urllib.request.Request(collector.url + "/api/v1/results", data=encode_batch(batch), method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read())["stored"] == 4
    [entry] = json.loads(http_get(collector.url + "/api/v1/paths?probe=p1")[1])["paths"]
    assert [hop.get("address") for hop in entry["latest"]["result"]["hops"]] == chain.hops(family, via="r2b")
    assert entry["changes"] == [{"probe": "p1", "target": "target", "start_ns": after[0]["start_ns"],
                                 "fingerprint": after[0]["info"]["fingerprint"],
                                 "previous_fingerprint": before[1]["info"]["fingerprint"]}]
    metrics = collector.metrics()
    series = 'probe="p1",target="target",target_class="edge"'
    assert re.search(rf'qiancheng_path_changes_total{{city="lishui",isp="test-isp",kind="path",{series}}} 1\.0', metrics)
    third = chain.hops(family, via="r2b")[2]
    assert re.search(rf'qiancheng_path_hop_rtt_seconds{{address="{re.escape(third)}",city="lishui",hop="3",isp="test-isp",'
                     rf'kind="path",{series}}} \d', metrics), metrics


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("protocol", ("udp", "tcp"))
def test_equal_cost_routes_give_a_stable_hop_list_per_flow(chain: Chain, tracer: Any, family: str, protocol: str) -> None:
    chain.balance()
    once = tracer(family, protocol, 8)
    seen: set[str] = set()
    for attempt in range(3):  # 8 flows all hashed onto one route: 1 in 128; three traces: 1 in 2 million
        result = once()
        assert result["success"], result
        for flow in range(8):
            hops = [hop for hop in result["hops"] if hop.get("flow", 0) == flow]
            assert all(not hop.get("others") for hop in hops), hops  # one address per TTL: one path
            assert [hop["address"] for hop in hops] in (chain.hops(family, "r2"), chain.hops(family, "r2b")), hops
            seen.add(hops[1]["address"])
        if len(seen) == 2:
            break
        time.sleep(0.1)
    assert len(seen) == 2, f"every flow took one route: {seen}"


def test_each_hop_names_its_as_from_the_local_table_and_its_reverse_name(chain: Chain, tmp_path: Path) -> None:
    table = tmp_path / "asn.txt"
    table.write_text("198.18.0.0/15 64500\n198.18.0.12/30 AS64501  # the target's link\n2001:2::/48 64502\n")
    ours = trace(chain, "ipv4", "--rounds", "2", "--round-interval", "50ms", "--asn-file", str(table))
    assert [hop.get("asn") for hop in ours["hops"]] == [64500, 64500, 64500, 64501]
    assert not any("name" in hop for hop in ours["hops"])  # reverse names only when asked
    # loopback's name comes from /etc/hosts: no query leaves the machine
    named = probe_once(chain.probe, "path", "127.0.0.1", "--rounds", "1", "--reverse-dns")
    assert [hop.get("name") for hop in named["hops"]] == ["localhost"], named["hops"]
