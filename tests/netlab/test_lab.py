"""The lab itself: links carry traffic in both families and nowhere else, tbf limits the rate a transfer
sees, nftables drops exactly the packets it counts, and teardown leaves nothing behind."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from tests.integration.helpers import require_tool
from tests.netlab.conftest import PREFIX, Pair, fping_samples, require_lab_tools
from tests.netlab.lab import Lab, drop_all, drop_random, dropped_packets, shape_rate
from tests.netlab.relay import A_TO_B, B_TO_A, RelaySettings


def test_a_link_carries_both_families_and_nothing_leaves(pair: Pair) -> None:
    for address in (pair.link.b_addr, pair.link.b_addr6):
        samples = fping_samples(pair.client, address, count=5, interval_ms=10)
        assert all(s is not None and s < 0.01 for s in samples), (address, samples)
    assert pair.link.b_addr.startswith("198.1") and pair.link.b_addr6.startswith("2001:2:")
    for family in ("-4", "-6"):
        routes = pair.client.run("ip", family, "route", "show").stdout
        assert "default" not in routes, routes
    # An address outside the lab has no route: the kernel refuses to send at all.
    done = pair.client.run("ping", "-c", "1", "-W", "1", "198.19.255.254", check=False)
    assert done.returncode != 0 and "unreachable" in (done.stdout + done.stderr).lower()


def test_a_router_forwards_between_its_links_in_both_families(lab: Lab) -> None:
    client, router, server = lab.namespace("client"), lab.router(), lab.namespace("server")
    near, far = lab.link(client, router), lab.link(router, server)
    client.route(far.network, via=near.b_addr)
    client.route(far.network6, via=near.b_addr6)
    server.route(near.network, via=far.a_addr)
    server.route(near.network6, via=far.a_addr6)
    for address in (far.b_addr, far.b_addr6):
        done = client.run("ping", "-c", "2", "-i", "0.05", address)
        assert "2 received" in done.stdout and "ttl=63" in done.stdout, done.stdout  # one hop: 64 - 1
    with pytest.raises(ValueError, match="default route"):
        client.route("default", via=near.b_addr)
    with pytest.raises(ValueError, match="outside the lab"):
        client.route("0.0.0.0/0", via=near.b_addr)


def test_token_bucket_limits_a_transfer_to_its_rate(pair: Pair) -> None:
    iperf3 = require_tool("iperf3")
    rate = 20_000_000
    shape_rate(pair.client, pair.link.a_dev, rate)
    server = pair.server.popen(iperf3, "-s", "-1", "-B", pair.link.b_addr, stdout=subprocess.DEVNULL)
    pair.server.wait_listening(5201)
    done = pair.client.run(iperf3, "-c", pair.link.b_addr, "-t", "3", "-O", "1", "-J", timeout=30)
    server.wait(timeout=10)
    report = json.loads(done.stdout)
    goodput = report["end"]["sum_received"]["bits_per_second"]
    # tbf counts whole frames (Ethernet + IP + TCP headers), so goodput sits a few % under the rate.
    assert 0.88 * rate <= goodput <= 1.01 * rate, goodput


def test_random_loss_drops_exactly_what_nftables_counts(pair: Pair) -> None:
    count, percent = 400, 20.0
    drop_random(pair.server, percent, direction="in")
    samples = fping_samples(pair.client, pair.link.b_addr, count=count, interval_ms=2, timeout_ms=200)
    lost = sum(s is None for s in samples)
    # Only requests entering the server are dropped, so every lost packet is one nftables counted.
    assert lost == dropped_packets(pair.server, "ip")
    expected, sd = count * percent / 100, math.sqrt(count * percent / 100 * (1 - percent / 100))
    assert abs(lost - expected) <= 4 * sd, lost


def test_a_blackhole_answers_nothing(pair: Pair) -> None:
    drop_all(pair.server, direction="out")
    samples = fping_samples(pair.client, pair.link.b_addr6, count=5, interval_ms=10, timeout_ms=200)
    assert samples == [None] * 5
    assert dropped_packets(pair.server, "ip6") >= 5  # the replies, dropped on their way out


def test_relay_link_carries_packets_and_logs_each(lab: Lab) -> None:
    client, server = lab.namespace("client"), lab.namespace("server")
    link = lab.delayed_link(client, server, RelaySettings())
    for address in (link.b_addr, link.b_addr6):
        samples = fping_samples(client, address, count=5, interval_ms=10)
        assert all(s is not None for s in samples), (address, samples)
    echoes = [r for r in link.log() if r.protocol == "icmp"]
    assert sorted(r.kind for r in echoes if r.direction == A_TO_B) == [8] * 5  # requests
    assert sorted(r.kind for r in echoes if r.direction == B_TO_A) == [0] * 5  # replies
    assert [r.sequence for r in echoes if r.direction == A_TO_B] == sorted(r.sequence for r in echoes if r.direction == A_TO_B)
    echoes6 = [r for r in link.log() if r.protocol == "icmp6" and r.kind in (128, 129)]
    assert len(echoes6) == 10  # five echo requests and five replies


def test_teardown_removes_namespaces_even_after_a_failure() -> None:
    require_lab_tools()
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(PREFIX) as lab:
            a, b = lab.namespace("a"), lab.namespace("b")
            lab.link(a, b)
            lab.delayed_link(a, b)
            names = [a.name, b.name]
            raise RuntimeError("boom")
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert names and not any(name in listing for name in names), listing
