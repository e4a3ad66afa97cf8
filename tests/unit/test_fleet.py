"""The fleet listing: a state per registered probe from the registry and the last batch seen, filters,
and queries refused with the parameter at fault."""

from __future__ import annotations

import pytest

from qiancheng.collector.fleet import FleetQueryError, fleet, parse_query
from qiancheng.collector.live import ProbeLive
from qiancheng.collector.records import RegistryEntry

NOW = 1_800_000_000_000_000_000
S = 10**9


def registered(probe_id: str, source: str = "config", state: str = "active", city: str = "", isp: str = "") -> RegistryEntry:
    return RegistryEntry(probe_id, city, isp, source, state, "h-" + probe_id, None, None, NOW, NOW)  # type: ignore[arg-type]


def seen(seconds_ago: float, city: str = "lishui", isp: str = "chinatelecom") -> ProbeLive:
    return ProbeLive(city=city, isp=isp, labels={"site": "olt-3"}, stats={"spool_backlog": 4.0, "spool_dropped_total": 0.0},
                     last_seen_ns=NOW - round(seconds_ago * S))


ENTRIES = [
    registered("a-ok"), registered("b-stale"), registered("c-never", "enrolled", city="quzhou", isp="chinaunicom"),
    registered("d-revoked", state="revoked"),
]
LIVE = {"a-ok": seen(10), "b-stale": seen(301, city="quzhou"), "d-revoked": seen(5), "gone": seen(1)}


def test_each_probe_gets_its_state_and_the_registry_names_an_enrolled_probes_city() -> None:
    listing = fleet(ENTRIES, LIVE, NOW, {}, 300.0)
    assert [(p.id, p.state, p.city) for p in listing.probes] == [
        ("a-ok", "ok", "lishui"), ("b-stale", "stale", "quzhou"), ("c-never", "never", "quzhou"),
        ("d-revoked", "revoked", "lishui"),
    ]  # "gone" left the registry: not listed
    assert listing.counts == {"ok": 1, "stale": 1, "never": 1, "revoked": 1}
    first = listing.probes[0]
    assert first.last_seen_ns == NOW - 10 * S and first.spool_backlog == 4.0 and first.labels == {"site": "olt-3"}
    assert listing.probes[2].last_seen_ns is None and listing.probes[2].spool_backlog is None


def test_filters_combine_and_the_counts_follow_them() -> None:
    listing = fleet(ENTRIES, LIVE, NOW, {"city": "quzhou"}, 300.0)
    assert [p.id for p in listing.probes] == ["b-stale", "c-never"]
    assert listing.counts == {"ok": 0, "stale": 1, "never": 1, "revoked": 0}
    assert [p.id for p in fleet(ENTRIES, LIVE, NOW, {"city": "quzhou", "state": "never"}, 300.0).probes] == ["c-never"]
    assert [p.id for p in fleet(ENTRIES, LIVE, NOW, {}, 5.0).probes if p.state == "stale"] == ["a-ok", "b-stale"]


def test_a_good_query_parses() -> None:
    assert parse_query({"city": "lishui", "state": "stale", "stale_after": "60"}) == ({"city": "lishui", "state": "stale"}, 60.0)
    assert parse_query({}) == ({}, 300.0)


@pytest.mark.parametrize(("query", "field"), [
    ({"town": "x"}, "town"), ({"state": "asleep"}, "state"), ({"stale_after": "0"}, "stale_after"),
    ({"stale_after": "soon"}, "stale_after"), ({"stale_after": "nan"}, "stale_after"),
    ({"stale_after": "1e12"}, "stale_after"),
])
def test_a_bad_query_names_the_parameter(query: dict[str, str], field: str) -> None:
    with pytest.raises(FleetQueryError) as caught:
        parse_query(query)
    assert caught.value.field == field
