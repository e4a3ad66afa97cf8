"""STAMP on the test network, against what the delay relay and nftables really did.

- Round trip and one-way delays, IPv4 and IPv6, on STAMP's registered port 862, through a relay holding
  each packet 10 ms each way: our
  medians within 0.1 ms (the accuracy figure of the ICMP kind) of the relay's own record and of fping's
  median on the same link in the same run. Both ends share this host's clock, so the one-way delays
  are checked too, against the relay's per-direction holds.
- Loss, exact: nftables drops fixed positions of the requests (at the reflector) and of the replies (at
  the sender); the lost sequence numbers are known to the packet.
- Reordering and duplicates: the relay draws holds that reorder packets and duplicates some, in both
  directions; the counts the sender should see are rebuilt from the relay's log.

The relay logs UDP packets by ports, not by STAMP sequence number. A train is its only UDP traffic, so
the requests in arrival order are sequence numbers 0, 1, ...; the reflector answers in the order the
relay delivered the requests, so the replies in the order they reached the relay map onto those.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON
from tests.integration.helpers import require_tool
from tests.netlab.conftest import fping_samples, require_lab_tools
from tests.netlab.lab import DelayedLink, Lab, Link, Netns, drop_pattern, dropped_packets
from tests.netlab.relay import A_TO_B, B_TO_A, RelayRecord, RelaySettings

PREFIX = "qs"
PORT = 8620  # the responder's default: the tests that use it start the responder without --stamp-port
REGISTERED_PORT = 862  # STAMP's registered port, which the responder binds when it runs as root
MEDIAN_TOLERANCE = 0.1e-3  # as for the ICMP kind's medians against fping and the relay
RAISED = ("nice", "-n", "-10")  # the measuring tools beside colleagues' test runs on two shared cores


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    require_lab_tools()
    with Lab(PREFIX, workdir=tmp_path / "lab") as built:
        yield built


def start_reflector(server: Netns, *addresses: str, port: int = PORT, options: tuple[str, ...] = ()) -> None:
    listen = [arg for address in addresses for arg in ("--listen", address)]
    stamp_port = [] if port == PORT else ["--stamp-port", str(port)]
    server.popen(*RAISED, PYTHON, "-m", "qiancheng.probes.responder.main", *listen, "--http-port", "0",
                 "--echo-port", "0", "--dns-port", "0", *stamp_port, *options, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server.wait_listening(port, "udp")


def stamp_once(client: Netns, address: str, *options: str, port: int = PORT) -> dict[str, Any]:
    """`qiancheng-probe once --json --kind stamp` inside `client`; its one result."""
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    done = client.run(*RAISED, PYTHON, "-m", "qiancheng.probes.cli", "once", "--json", "--kind", "stamp", *options,
                      target, check=False, timeout=60)
    assert done.returncode in (0, 1), f"probe exit {done.returncode}: {done.stderr}"
    [result] = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert isinstance(result, dict)
    return result


def stamp_records(records: list[RelayRecord], port: int = PORT) -> tuple[list[RelayRecord], list[RelayRecord]]:
    """The relay's records of STAMP requests (towards the reflector) and replies, in release order."""
    requests = [r for r in records if r.protocol == "udp" and r.direction == A_TO_B and r.sequence == port]
    replies = [r for r in records if r.protocol == "udp" and r.direction == B_TO_A and r.ident == port]
    return requests, replies


def received_order(records: list[RelayRecord]) -> list[int]:
    """The sequence numbers of the replies in the order the sender got them, rebuilt from the relay's log."""
    requests, replies = stamp_records(records)
    sequence_of = {r.arrival_ns: i for i, r in enumerate(sorted((r for r in requests if r.copy == 0),
                                                                 key=lambda r: r.arrival_ns))}
    delivered = [sequence_of[r.arrival_ns] for r in requests]  # what the reflector read, in order
    answer_of = {r.arrival_ns: j for j, r in enumerate(sorted((r for r in replies if r.copy == 0),
                                                               key=lambda r: r.arrival_ns))}
    return [delivered[answer_of[r.arrival_ns]] for r in replies]


# --- round trip and one-way delays --------------------------------------------------------------------

DELAY = 0.010  # each way
COUNT, INTERVAL = 100, 0.01


def _delay_run(link: DelayedLink, address: str, options: tuple[str, ...]) -> tuple[dict[str, Any], list[float | None], list[RelayRecord]]:
    """Our train and fping's on the same link at the same time; the relay's records of our train."""
    before = len(link.log())
    fping: list[list[float | None]] = []
    thread = threading.Thread(target=lambda: fping.append(
        fping_samples(link.a, address, COUNT, INTERVAL * 1e3, timeout_ms=1000, wrap=RAISED)))
    thread.start()
    try:
        ours = stamp_once(link.a, address, "--count", str(COUNT), "--packet-interval", f"{INTERVAL * 1e3:g}ms",
                          "--timeout", "1s", *options, port=REGISTERED_PORT)
    finally:
        thread.join()
    return ours, fping[0], link.log()[before:]


@pytest.mark.parametrize("mode", ["unauthenticated", "authenticated"])
def test_round_trip_and_one_way_delays_against_the_relay_and_fping(lab: Lab, capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path, mode: str) -> None:
    require_tool("fping")
    client, server = lab.namespace("c"), lab.namespace("s")
    link = lab.delayed_link(client, server, RelaySettings(delay=DELAY))
    options: tuple[str, ...] = ()
    if mode == "authenticated":  # RFC 8762 §4.2.2: 112-byte packets signed with HMAC-SHA-256, both ways
        secret = tmp_path / "responder.secret"
        secret.write_text("3c9e1f0a7b6d5e4f3a2b1c0d9e8f7a6b\n")
        options = ("--secret-file", str(secret))
    start_reflector(server, link.b_addr, link.b_addr6, port=REGISTERED_PORT, options=options)
    # the authenticated train only over IPv4: the packet code is the same for both families
    for address in (link.b_addr, link.b_addr6) if mode == "unauthenticated" else (link.b_addr,):
        ours, fping, records = _delay_run(link, address, options)
        requests, replies = stamp_records(records, REGISTERED_PORT)
        assert len(requests) == len(replies) == COUNT, "the lossless link lost or added packets"
        # STAMP's round trip leaves out the reflector's time between T2 and T3 (RFC 8762 §4), so its truth
        # is the time the path held the request plus the time it held the reply
        truth_rtt = statistics.median(a.hold_seconds + b.hold_seconds for a, b in zip(requests, replies))
        truth_forward = statistics.median(r.hold_seconds for r in requests)
        truth_backward = statistics.median(r.hold_seconds for r in replies)
        figures = ours["figures"]
        fping_median = statistics.median(s for s in fping if s is not None)
        with capsys.disabled():
            print(f"\nSTAMP {mode} {address}: rtt median ours {figures['rtt_median_seconds'] * 1e3:.3f} ms, relay "
                  f"{truth_rtt * 1e3:.3f} ms, fping {fping_median * 1e3:.3f} ms; forward ours "
                  f"{figures['forward_delay_median_seconds'] * 1e3:.3f} ms relay {truth_forward * 1e3:.3f} ms; "
                  f"backward ours {figures['backward_delay_median_seconds'] * 1e3:.3f} ms relay "
                  f"{truth_backward * 1e3:.3f} ms; clock error stated {figures['clock_error_seconds']:g} s")
        assert ours["success"] and figures["packets_received"] == COUNT
        assert ours["info"]["mode"] == mode
        assert ours["info"]["send_timestamps"] == ours["info"]["receive_timestamps"] == "kernel"
        assert sum(s is not None for s in fping) == COUNT, "fping lost packets on a lossless link"
        assert abs(figures["rtt_median_seconds"] - truth_rtt) <= MEDIAN_TOLERANCE
        assert abs(figures["rtt_median_seconds"] - fping_median) <= MEDIAN_TOLERANCE
        assert abs(figures["forward_delay_median_seconds"] - truth_forward) <= MEDIAN_TOLERANCE
        assert abs(figures["backward_delay_median_seconds"] - truth_backward) <= MEDIAN_TOLERANCE
        assert figures["clock_error_seconds"] > 0 and figures["clock_synchronized"] in (0.0, 1.0)
        # the relay forwards without routing: our packets reach the reflector with the TTL they left with
        default_ttl = "net.ipv6.conf.all.hop_limit" if ":" in address else "net.ipv4.ip_default_ttl"
        sent_ttl = client.run("cat", f"/proc/sys/{default_ttl.replace('.', '/')}").stdout.strip()
        assert ours["info"]["reflector_ttl"] == sent_ttl


# --- loss ----------------------------------------------------------------------------------------------

LOSS_COUNT, LOSS_PERIOD = 50, 10
REQUESTS_DROPPED = {3, 7}  # positions (mod 10) of the requests dropped as they reach the reflector
REPLIES_DROPPED = {5}  # positions (mod 10) of the replies that reach the sender


def test_loss_is_exactly_the_packets_dropped_both_ways(pair_link: Link) -> None:
    client, server = pair_link.a, pair_link.b
    start_reflector(server, pair_link.b_addr)
    drop_pattern(server, REQUESTS_DROPPED, LOSS_PERIOD, direction="in")
    drop_pattern(client, REPLIES_DROPPED, LOSS_PERIOD, direction="in")
    result = stamp_once(client, pair_link.b_addr, "--count", str(LOSS_COUNT), "--packet-interval", "5ms",
                        "--timeout", "300ms")
    answered = [i for i in range(LOSS_COUNT) if i % LOSS_PERIOD not in REQUESTS_DROPPED]
    expected_lost = sorted({i for i in range(LOSS_COUNT) if i % LOSS_PERIOD in REQUESTS_DROPPED}
                           | {seq for k, seq in enumerate(answered) if k % LOSS_PERIOD in REPLIES_DROPPED})
    lost = [i for i, sample in enumerate(result["samples"]) if sample is None]
    assert lost == expected_lost
    figures = result["figures"]
    assert figures["packets_lost"] == len(expected_lost)
    assert figures["loss_ratio"] == len(expected_lost) / LOSS_COUNT
    assert figures["duplicates"] == figures["late"] == figures["reordered"] == 0
    assert dropped_packets(server, "ip") + dropped_packets(client, "ip") == len(expected_lost)


@pytest.fixture
def pair_link(lab: Lab) -> Link:
    return lab.link(lab.namespace("c"), lab.namespace("s"))


# --- reordering and duplicates -------------------------------------------------------------------------

SHUFFLING = RelaySettings(delay=0.006, distribution="uniform", spread=0.005, reorder=True, duplicate=0.08, seed=8762)
SHUFFLE_COUNT, SHUFFLE_INTERVAL = 300, 0.002


def test_reordering_and_duplicates_match_the_relay_log_ipv6(lab: Lab) -> None:
    client, server = lab.namespace("c"), lab.namespace("s")
    link = lab.delayed_link(client, server, SHUFFLING)
    start_reflector(server, link.b_addr6)
    before = len(link.log())
    result = stamp_once(client, link.b_addr6, "--count", str(SHUFFLE_COUNT), "--packet-interval",
                        f"{SHUFFLE_INTERVAL * 1e3:g}ms", "--timeout", "1s")
    order = received_order(link.log()[before:])
    seen: set[int] = set()
    highest, reordered = -1, 0
    duplicates = 0
    for sequence in order:  # until the reply that completes the train: the sender stops counting there
        if len(seen) == SHUFFLE_COUNT:
            break
        if sequence in seen:
            duplicates += 1
            continue
        seen.add(sequence)
        reordered += sequence < highest
        highest = max(highest, sequence)
    assert reordered > 10 and duplicates > 10, "the relay's settings did not shuffle: the test would prove nothing"
    figures = result["figures"]
    assert figures["packets_received"] == len(seen) == SHUFFLE_COUNT
    assert figures["reordered"] == reordered
    assert figures["duplicates"] == duplicates
    assert figures["loss_ratio"] == 0 and figures["late"] == 0
