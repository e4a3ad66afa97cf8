"""DNS lookups against a real resolver (dnsmasq) in a namespace, compared with dig on the same link.

The resolver answers a local zone (NXDOMAIN for unknown names) and gives SERVFAIL for a zone whose
DNSSEC chain it cannot build; a blackhole on the resolver's links makes a timeout. Lookup times are
compared over a plain veth and over the delay relay (5 ms each way), with the resolver reached over
IPv4 and IPv6; dig prints whole milliseconds, so the two must agree within that 1 ms resolution.

dig's clock is coarser still: BIND reads CLOCK_REALTIME_COARSE, which advances once per kernel tick
(4 ms on this kernel, HZ=250), so over a 10.2 ms round trip dig prints 8 or 12, never 10. The median
of such readings jumps by a whole tick; their mean does not: the tick's phase at each query is
random, so the reading is the true time rounded down or up in proportion, and the mean of 50 readings
is within ~0.3 ms (one standard error) of dig's true figure. We compare our median with that mean,
taken over the readings within one tick of their median so that a stall of the shared machine does
not drag it.
"""

from __future__ import annotations

import itertools
import re
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import require_root, require_tool
from tests.netlab.lab import Lab, Link, Netns, drop_all
from tests.netlab.relay import RelaySettings
from tests.netlab.servers.probe_worker import RAISED_PRIORITY, ProbeWorker
from tests.netlab.servers.resolver import BROKEN_ZONE, LOCAL_ZONE, start_resolver

RUNS = 50
BLOCK = 10  # lookups per turn of each tool
DIG_RESOLUTION_SECONDS = 1e-3  # dig prints whole milliseconds ("Query time: 10 msec")
_CLOCK_REALTIME_COARSE = 5  # Linux's clock id; Python 3.11 has no name for it
ONE_WAY_DELAY_SECONDS = 0.005
ANSWER_DOMAIN = f"www.{LOCAL_ZONE}"  # it and every name under it answer ANSWER_ADDRESS
ANSWER_ADDRESS = "198.18.255.10"  # only ever an answer, never contacted

_fresh = itertools.count()


@dataclass
class ClientPath:
    client: Netns
    link: Link
    one_way_delay: float
    worker: ProbeWorker

    def resolver(self, family: int) -> str:
        return self.link.b_addr if family == 4 else self.link.b_addr6


def _require_tools() -> None:
    require_root()
    for tool in ("dig", "dnsmasq", "ss", "nft"):
        require_tool(tool)


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ClientPath]]:
    _require_tools()
    with Lab("qnb", workdir=tmp_path_factory.mktemp("lab")) as lab:
        server = lab.namespace("s")
        veth_client, delay_client = lab.namespace("veth"), lab.namespace("delay")
        delayed = lab.delayed_link(delay_client, server, RelaySettings(delay=ONE_WAY_DELAY_SECONDS))
        links = {"veth": (veth_client, lab.link(veth_client, server), 0.0),
                 "delay": (delay_client, delayed, ONE_WAY_DELAY_SECONDS)}  # fmt: skip
        listen = [address for _, link, _ in links.values() for address in (link.b_addr, link.b_addr6)]
        start_resolver(server, lab.workdir, listen, {ANSWER_DOMAIN: [ANSWER_ADDRESS]})
        built = {role: ClientPath(client, link, delay, ProbeWorker(client)) for role, (client, link, delay) in links.items()}
        yield built
        for path in built.values():
            path.worker.close()


def _lookup(path: ClientPath, family: int, name: str, **settings: Any) -> dict[str, Any]:
    resolver = path.resolver(family)
    return path.worker.measure("dns", resolver if family == 4 else f"[{resolver}]", query_name=name, **settings)


def _dig_estimate(readings: list[float]) -> float:
    """dig's lookup time from its tick-quantised readings: their mean near the median (see module doc)."""
    tick = max(DIG_RESOLUTION_SECONDS, time.clock_getres(_CLOCK_REALTIME_COARSE))
    median = statistics.median(readings)
    return statistics.mean(r for r in readings if abs(r - median) <= tick + 1e-9)


def _dig(ns: Netns, resolver: str, names: list[str], *options: str) -> list[tuple[str, float | None]]:
    """(status, query time in seconds or None) per name, from one dig process."""
    done = ns.run(*RAISED_PRIORITY, "dig", f"@{resolver}", "+tries=1", "+time=2", *options, *names, check=False, timeout=30)
    statuses = re.findall(r"->>HEADER<<- opcode: QUERY, status: (\w+)", done.stdout)
    times = [float(ms) / 1e3 for ms in re.findall(r";; Query time: (\d+) msec", done.stdout)]
    if not statuses and "timed out" in done.stdout:
        return [("timeout", None)] * len(names)
    assert len(statuses) == len(times) == len(names), done.stdout
    return list(zip(statuses, times, strict=True))


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("role", ["veth", "delay"])
def test_lookup_time_agrees_with_dig(paths: dict[str, ClientPath], role: str, family: int) -> None:
    path = paths[role]
    _lookup(path, family, ANSWER_DOMAIN)  # warm-up, as for dig's first query below
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(RUNS // BLOCK):  # taking turns, so that a burst of load on this shared machine hits both
        for _ in range(BLOCK):
            result = _lookup(path, family, f"r{next(_fresh)}.{ANSWER_DOMAIN}")
            assert result["success"], result
            assert result["info"]["answer"] == ANSWER_ADDRESS and result["info"]["send_timestamps"] == "kernel"
            ours.append(result["figures"]["lookup_seconds"])
        names = [f"r{next(_fresh)}.{ANSWER_DOMAIN}" for _ in range(BLOCK + 1)]
        answers = _dig(path.client, path.resolver(family), names)[1:]
        assert all(status == "NOERROR" for status, _ in answers), answers
        theirs.extend(seconds for _, seconds in answers if seconds is not None)
    ours_median, dig_figure = statistics.median(ours), _dig_estimate(theirs)
    print(f"dns {role} IPv{family} over {RUNS}: our median {ours_median * 1e3:.3f} ms, dig's mean {dig_figure * 1e3:.3f} ms "
          f"(readings {sorted(set(theirs))})")
    assert ours_median >= 2 * path.one_way_delay  # a lookup is a full round trip
    assert abs(ours_median - dig_figure) <= DIG_RESOLUTION_SECONDS


@pytest.mark.parametrize(
    ("name", "reason", "rcode"),
    [(f"nope.{LOCAL_ZONE}", "nxdomain", "NXDOMAIN"), (f"www.{BROKEN_ZONE}", "servfail", "SERVFAIL")],
)
@pytest.mark.parametrize("family", [4, 6])
def test_failed_lookups_are_reported_as_dig_sees_them(
    paths: dict[str, ClientPath], family: int, name: str, reason: str, rcode: str
) -> None:
    path = paths["veth"]
    [(dig_status, _)] = _dig(path.client, path.resolver(family), [name])
    result = _lookup(path, family, name)
    assert dig_status == rcode
    assert result["success"] is False and result["error"] == reason, result
    assert result["info"]["rcode"] == rcode
    assert result["figures"]["answer_count"] == 0
    assert 0 < result["figures"]["lookup_seconds"] < 1  # the resolver did answer


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_a_blackholed_resolver_times_out(tmp_path: Path, protocol: str) -> None:
    _require_tools()
    with Lab("qnb", workdir=tmp_path / "lab") as lab:
        client, server = lab.namespace("c"), lab.namespace("s")
        link = lab.link(client, server)
        start_resolver(server, lab.workdir, [link.b_addr], {ANSWER_DOMAIN: [ANSWER_ADDRESS]})
        worker = ProbeWorker(client)
        try:
            settings = {"query_name": ANSWER_DOMAIN, "protocol": protocol, "timeout": "300ms"}
            assert worker.measure("dns", link.b_addr, **settings)["success"]  # it answers until the blackhole
            drop_all(server, "in")
            result = worker.measure("dns", link.b_addr, **settings)
            dig_options = ["+tcp"] if protocol == "tcp" else []
            [(dig_status, _)] = _dig(client, link.b_addr, [ANSWER_DOMAIN], "+time=1", *dig_options)
        finally:
            worker.close()
    assert dig_status == "timeout"
    assert result["success"] is False and result["error"] == "timeout", result
    assert 0.3 <= result["duration_seconds"] < 1.0
