"""A routed chain for path tests: probe - r1 - r2 - r3 - target, and r2b beside r2 (r1 - r2b - r3) as
an alternative or equal-cost second path, both families. Routers answer every expiring probe (ICMP
rate limiting off) unless a test turns it on; `mtr_hops` and `traceroute_hops` run the peers."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from tests.integration.helpers import require_tool
from tests.netlab.lab import Lab, Link, Netns
from tests.netlab.relay import RelaySettings

POOL4, POOL6 = "198.18.0.0/15", "2001:2::/48"


@dataclass(frozen=True)
class Chain:
    """The namespaces and links of the chain; `hops(family)` is the true hop list, nearest first."""

    probe: Netns
    r1: Netns
    r2: Netns
    r2b: Netns
    r3: Netns
    target: Netns
    links: dict[str, Link]  # probe-r1, r1-r2, r2-r3, r3-target, r1-r2b, r2b-r3

    def hops(self, family: str = "ipv4", via: str = "r2") -> list[str]:
        """The addresses that answer at TTL 1, 2, ...: then the target. Linux sends an IPv4 time exceeded
        from its address on the route back to the probe (r3 answers from the r2-r3 link whichever way
        the probe came) and an ICMPv6 one from the link the probe came in on."""
        six = family == "ipv6"
        names = ["probe-r1", f"r1-{via}", f"{via}-r3" if six else "r2-r3", "r3-target"]
        return [self.links[name].b_addr6 if six else self.links[name].b_addr for name in names]

    def target_address(self, family: str = "ipv4") -> str:
        return self.hops(family)[-1]

    def use(self, via: str) -> None:
        """Send r1's traffic towards the target through `via` (r2 or r2b)."""
        for pool, next_hop in ((POOL4, self.links[f"r1-{via}"].b_addr), (POOL6, self.links[f"r1-{via}"].b_addr6)):
            for prefix in _far_prefixes(self, pool):
                self.r1.run("ip", "route", "replace", prefix, "via", next_hop)

    def balance(self) -> None:
        """Spread r1's traffic towards the target over r2 and r2b (equal-cost multipath, hashed on the
        5-tuple: fib_multipath_hash_policy 1)."""
        self.r1.sysctl("net.ipv4.fib_multipath_hash_policy", "1")
        self.r1.sysctl("net.ipv6.fib_multipath_hash_policy", "1")
        for pool, six in ((POOL4, False), (POOL6, True)):
            a = self.links["r1-r2"].b_addr6 if six else self.links["r1-r2"].b_addr
            b = self.links["r1-r2b"].b_addr6 if six else self.links["r1-r2b"].b_addr
            for prefix in _far_prefixes(self, pool):
                self.r1.run("ip", "route", "replace", prefix, "nexthop", "via", a, "nexthop", "via", b)

    def rate_limit(self, router: Netns, milliseconds: int) -> None:
        """Let `router` send at most one ICMP error per `milliseconds` per destination (Linux's default is
        1000, with a burst of six)."""
        router.sysctl("net.ipv4.icmp_ratelimit", str(milliseconds))
        router.sysctl("net.ipv6.icmp.ratelimit", str(milliseconds))


def _far_prefixes(chain: Chain, pool: str) -> list[str]:
    six = pool == POOL6
    return [chain.links[name].network6 if six else chain.links[name].network for name in ("r2-r3", "r3-target", "r2b-r3")]


def build_chain(lab: Lab, delay_r2_r3: RelaySettings | None = None) -> Chain:
    """The chain, routed through r2; with `delay_r2_r3` the r2-r3 link runs through the delay relay."""
    probe, r1, r2, r2b, r3, target = (lab.namespace("probe"), lab.router("r1"), lab.router("r2"), lab.router("r2b"),
                                      lab.router("r3"), lab.namespace("target"))
    links = {
        "probe-r1": lab.link(probe, r1),
        "r1-r2": lab.link(r1, r2),
        "r2-r3": lab.delayed_link(r2, r3, delay_r2_r3) if delay_r2_r3 else lab.link(r2, r3),
        "r3-target": lab.link(r3, target),
        "r1-r2b": lab.link(r1, r2b),
        "r2b-r3": lab.link(r2b, r3),
    }
    for ns in (r1, r2, r2b, r3, target):
        ns.sysctl("net.ipv4.icmp_ratelimit", "0")
        ns.sysctl("net.ipv6.icmp.ratelimit", "0")
    for pool, six in ((POOL4, False), (POOL6, True)):
        def addr(name: str, end: str) -> str:
            link = links[name]
            return str(getattr(link, f"{end}_addr6" if six else f"{end}_addr"))

        def net(name: str) -> str:
            return links[name].network6 if six else links[name].network

        probe.route(pool, addr("probe-r1", "b"))
        target.route(pool, addr("r3-target", "a"))
        for name in ("r2-r3", "r3-target", "r2b-r3"):
            r1.route(net(name), addr("r1-r2", "b") if name != "r2b-r3" else addr("r1-r2b", "b"))
        r2.route(net("probe-r1"), addr("r1-r2", "a"))
        r2.route(net("r3-target"), addr("r2-r3", "b"))
        r2b.route(net("probe-r1"), addr("r1-r2b", "a"))
        r2b.route(net("r3-target"), addr("r2b-r3", "b"))
        for name in ("probe-r1", "r1-r2", "r1-r2b"):
            r3.route(net(name), addr("r2-r3", "a"))
    chain = Chain(probe, r1, r2, r2b, r3, target, links)
    chain.use("r2")
    return chain


@dataclass(frozen=True)
class PeerHop:
    """One hop as a peer tool printed it: its address (None for no reply), loss and RTTs in seconds."""

    address: str | None
    loss_ratio: float
    rtts: tuple[float, ...] = ()
    average: float | None = None
    best: float | None = None
    worst: float | None = None


_MTR_PROTOCOL = {"icmp": (), "udp": ("--udp",), "tcp": ("--tcp",)}


def mtr_hops(ns: Netns, address: str, protocol: str = "icmp", port: int | None = None, cycles: int = 10,
             interval: float = 0.1, family: str = "ipv4") -> list[PeerHop]:
    """`mtr --report --json` run in `ns`: one PeerHop per TTL up to the destination."""
    mtr = require_tool("mtr")
    options = [*_MTR_PROTOCOL[protocol], "-6" if family == "ipv6" else "-4"]
    if port is not None:
        options += ["--port", str(port)]
    done = ns.run(mtr, "--report", "--json", "--no-dns", "--report-cycles", str(cycles), "--interval", f"{interval:g}",
                  "--timeout", "2", *options, address, timeout=cycles * interval + 60)
    hubs = json.loads(done.stdout)["report"]["hubs"]
    return [PeerHop(None if hub["host"] == "???" else hub["host"], hub["Loss%"] / 100, (),
                    hub["Avg"] / 1e3, hub["Best"] / 1e3, hub["Wrst"] / 1e3) for hub in hubs]


_TRACEROUTE_PROTOCOL = {"icmp": ("-I",), "udp": ("-U",), "tcp": ("-T",)}
_TRACEROUTE_HOP = re.compile(r"^\s*(\d+)\s+(.*)$")


def traceroute_hops(ns: Netns, address: str, protocol: str = "icmp", port: int | None = None, queries: int = 3,
                    family: str = "ipv4") -> list[PeerHop]:
    """`traceroute -n` run in `ns`: one PeerHop per TTL, its RTTs as printed."""
    traceroute = require_tool("traceroute")
    options = [*_TRACEROUTE_PROTOCOL[protocol], "-6" if family == "ipv6" else "-4", "-q", str(queries), "-w", "2", "-n"]
    if port is not None:
        options += ["-p", str(port)]
    done = ns.run(traceroute, *options, address, timeout=120)
    hops = []
    for line in done.stdout.splitlines()[1:]:
        match = _TRACEROUTE_HOP.match(line)
        if not match:
            continue
        words = match.group(2).split()
        addresses = [w for w in words if re.fullmatch(r"[0-9a-fA-F.:]+", w) and ("." in w or ":" in w) and w.count(".") != 1]
        rtts = tuple(float(words[i - 1]) / 1e3 for i, w in enumerate(words) if w == "ms" and i)
        answered = len(rtts)
        hops.append(PeerHop(addresses[0] if addresses else None, 1 - answered / queries, rtts))
    return hops
