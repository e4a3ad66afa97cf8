"""From probes to hops: per-TTL figures as mtr gives them, the flow cut at its destination, rate limiting
told from loss that persists, fingerprints, and the local prefix-to-AS table."""

from __future__ import annotations

from pathlib import Path

import pytest

from qiancheng.core.asn_table import read_asn_table
from qiancheng.core.result import Hop
from qiancheng.probes.measure.path_hops import ProbeRecord, aggregate, fingerprint, rate_limited

ROUTERS = ["198.18.0.2", "198.18.0.6", "198.18.0.10"]
DESTINATION = "198.18.0.14"


def probes(rounds: int, answered: dict[int, set[int]] | None = None, rtt: float = 0.001, flow: int = 0,
           path: list[str] | None = None, beyond: int = 2) -> list[ProbeRecord]:
    """Probes of `rounds` rounds to the chain, TTL 1..4 and `beyond` TTLs past the destination; TTL t's
    probe of round r is answered unless `answered[t]` leaves r out."""
    path = (path or ROUTERS) + [DESTINATION]
    records = []
    for round_index in range(rounds):
        for ttl in range(1, len(path) + 1 + beyond):
            record = ProbeRecord(flow, ttl, round_index)
            if answered is None or ttl not in answered or round_index in answered[ttl]:
                record.responder = path[min(ttl, len(path)) - 1]
                record.rtt = rtt * ttl + round_index * 1e-5
                record.reached = ttl >= len(path)
            records.append(record)
    return records


def test_hops_are_per_ttl_and_end_at_the_destination() -> None:
    trace = aggregate(probes(10, {2: set(range(0, 10, 2))}), flows=1)
    assert [hop.address for hop in trace.hops] == [*ROUTERS, DESTINATION]
    assert trace.destination_ttl == {0: 4} and trace.reached
    second = trace.hops[1]
    assert (second.sent, second.received, second.loss_ratio) == (10, 5, 0.5)
    first = trace.hops[0]
    assert first.rtt_min_seconds == pytest.approx(0.001)
    assert first.rtt_max_seconds == pytest.approx(0.001 + 9e-5)
    assert first.rtt_median_seconds == pytest.approx(0.001 + 4.5e-5)
    assert first.rtt_last_seconds == pytest.approx(0.001 + 9e-5)


def test_loss_that_does_not_persist_is_rate_limiting() -> None:
    # hop 2 answers 3 of 20 while every hop beyond answers all: the router limits its replies
    trace = aggregate(probes(20, {2: {0, 7, 14}}), flows=1)
    assert [hop.rate_limited for hop in trace.hops] == [False, True, False, False]
    # the same loss at hop 2 and at every hop after it is path loss, never rate limiting
    lossy = {ttl: set(range(0, 20, 3)) for ttl in (2, 3, 4, 5, 6)}
    assert not any(hop.rate_limited for hop in aggregate(probes(20, lossy), flows=1).hops)
    # one reply missing of ten is within chance: no label
    assert not any(hop.rate_limited for hop in aggregate(probes(10, {2: set(range(1, 10))}), flows=1).hops)


def test_fishers_test_against_hand_computed_values() -> None:
    def hop(sent: int, received: int) -> Hop:
        return Hop(ttl=1, sent=sent, received=received, loss_ratio=1 - received / sent)

    # 8 of 10 lost against 0 of 10: p = C(10,8)C(10,0)/C(20,8) = 45/125970 = 0.00036
    assert rate_limited(hop(10, 2), hop(10, 10))
    # 7 of 10 against 0 of 10: p = C(10,7)/C(20,7) = 120/77520 = 0.0015
    assert not rate_limited(hop(10, 3), hop(10, 10))
    # 5 of 10 against 0 of 10: p = 252/15504 = 0.016, once enough, now within chance
    assert not rate_limited(hop(10, 5), hop(10, 10))
    # the same true loss at two hops, 57 of 100 and 40 of 100 lost (a trace seen in the test network):
    # p = 0.012, chance
    assert not rate_limited(hop(100, 43), hop(100, 60))


def test_a_flow_that_never_reaches_ends_at_its_last_answer() -> None:
    records = [r for r in probes(3) if r.ttl <= 2]
    records += [ProbeRecord(0, ttl, round_index) for round_index in range(3) for ttl in range(3, 9)]
    trace = aggregate(records, flows=1)
    assert [hop.ttl for hop in trace.hops] == [1, 2]
    assert trace.destination_ttl == {0: None} and not trace.reached


def test_silent_hops_stay_in_the_list_unlabelled() -> None:
    trace = aggregate(probes(10, {2: set()}), flows=1)
    assert [hop.address for hop in trace.hops] == [ROUTERS[0], None, ROUTERS[2], DESTINATION]
    assert trace.hops[1].loss_ratio == 1.0 and not trace.hops[1].rate_limited


def test_flows_and_fingerprints() -> None:
    other = ["198.18.0.2", "198.18.0.18", "198.18.0.10"]
    trace = aggregate(probes(5) + probes(5, flow=1, path=other), flows=2)
    assert [hop.address for hop in trace.flow_hops(1)] == [*other, DESTINATION]
    assert fingerprint(trace.hops) == fingerprint(aggregate(probes(5) + probes(5, flow=1, path=other), flows=2).hops)
    assert fingerprint(trace.flow_hops(0)) != fingerprint(aggregate(probes(5, path=other), flows=1).hops)
    assert len(fingerprint(trace.hops)) == 16
    # RTTs do not change the path
    assert fingerprint(aggregate(probes(5, rtt=0.01), flows=1).hops) == fingerprint(aggregate(probes(5), flows=1).hops)


def test_several_addresses_at_one_ttl_are_shown() -> None:
    records = probes(4)
    for record in records:
        if record.ttl == 2 and record.round == 3:
            record.responder = "198.18.0.18"
    hop = aggregate(records, flows=1).hops[1]
    assert hop.address == ROUTERS[1] and hop.others == ["198.18.0.18"]


def test_asn_table_longest_prefix(tmp_path: Path) -> None:
    table_file = tmp_path / "asn.txt"
    table_file.write_text("# operator's table\n198.18.0.0/15 64500\n198.18.0.0/24 AS64501  # the metro\n"
                          "2001:2::/48 64502\n2001:2:0:3::/64 4200000000\n")
    table = read_asn_table(str(table_file))
    assert table.lookup("198.18.0.6") == 64501
    assert table.lookup("198.19.1.1") == 64500
    assert table.lookup("2001:2:0:3::2") == 4200000000
    assert table.lookup("2001:2::1") == 64502
    assert table.lookup("192.0.2.1") is None and table.lookup("not an address") is None


@pytest.mark.parametrize(("text", "why"), [
    ("198.18.0.0/15\n", "asn.txt:1: expected `PREFIX ASN`"),
    ("198.18.0.1/15 64500\n", "asn.txt:1: bad prefix"),
    ("# fine\n198.18.0.0/15 sixty\n", "asn.txt:2: bad AS number"),
    ("2001:2::/48 4294967296\n", "asn.txt:1: bad AS number"),
])
def test_asn_table_errors_name_file_and_line(tmp_path: Path, text: str, why: str) -> None:
    table_file = tmp_path / "asn.txt"
    table_file.write_text(text)
    with pytest.raises(ValueError, match=why.replace("`", ".")):
        read_asn_table(str(table_file))
