"""Cache status and edge identity from header sets as CDNs and caches send them."""

from __future__ import annotations

import pytest

from qiancheng.core.result import is_figure_name
from qiancheng.probes.measure.cdn import CACHE_STATUSES, cache_facts

Headers = list[tuple[str, str]]

CLOUDFLARE_HIT: Headers = [
    ("Server", "cloudflare"), ("CF-Cache-Status", "HIT"), ("Age", "4271"),
    ("CF-RAY", "8a3c0f1e9b2d4c7a-SJC"), ("Content-Type", "image/png"),
]  # fmt: skip
CLOUDFRONT_MISS: Headers = [
    ("X-Cache", "Miss from cloudfront"),
    ("Via", "1.1 5c4f8f1b2a0e3d6c7b9a8e7f6d5c4b3a.cloudfront.net (CloudFront)"),
    ("X-Amz-Cf-Pop", "FRA56-P1"), ("X-Amz-Cf-Id", "q1Zs0mKx2WmV6Yb3e0TDdN2kzHfYx7wW9lLtq5nU3sQ=="),
]  # fmt: skip
CLOUDFRONT_REFRESH: Headers = [("X-Cache", "RefreshHit from cloudfront"), ("X-Amz-Cf-Pop", "NRT57-C1"), ("Age", "0")]
FASTLY_SHIELD_MISS_EDGE_HIT: Headers = [
    ("Via", "1.1 varnish, 1.1 varnish"), ("X-Served-By", "cache-iad-kiad7000025-IAD, cache-hkg17927-HKG"),
    ("X-Cache", "MISS, HIT"), ("X-Cache-Hits", "0, 3"), ("Age", "12"),
]  # fmt: skip
SQUID_HIT: Headers = [("X-Cache", "HIT from proxy7.example.net"), ("Via", "1.1 proxy7.example.net (squid/5.7)")]
AKAMAI_DEBUG: Headers = [
    ("X-Cache", "TCP_MEM_HIT from a23-52-43-14.deploy.akamaitechnologies.com (AkamaiGHost/11.4.3-0) (-)"),
    ("Server-Timing", "cdn-cache; desc=HIT, edge; dur=1"),
]  # fmt: skip
AKAMAI_SERVER_TIMING_MISS: Headers = [("Server-Timing", "cdn-cache; desc=MISS, edge; dur=14, origin; dur=88")]
NGINX_STALE: Headers = [("Server", "nginx"), ("X-Cache-Status", "UPDATING")]
ALIBABA_HIT: Headers = [
    ("Server", "Tengine"), ("Date", "Tue, 23 Jul 2019 05:52:14 GMT"),
    ("Ali-Swift-Global-Savetime", "1563861134"),
    ("Via", "cache36.l2cn1818[23,200-0,M], cache14.l2cn1818[39,0], kunlun7.cn1481[0,200-0,H], kunlun7.cn1481[1,0]"),
    ("Age", "1080"), ("X-Cache", "HIT TCP_MEM_HIT dirn:-2:-2"), ("X-Swift-SaveTime", "Tue, 23 Jul 2019 05:52:14 GMT"),
    ("X-Swift-CacheTime", "1765"), ("EagleId", "3df09a1b15638622147584175e"),
]  # fmt: skip
ALIBABA_REFRESH_MISS_NO_AGE: Headers = [
    ("Date", "Tue, 23 Jul 2019 06:10:00 GMT"), ("Ali-Swift-Global-Savetime", "1563861134"),
    ("Via", "cache55.l2cn2630[28,28,200-0,M], vcache15.cn838[86,0]"), ("X-Cache", "MISS TCP_REFRESH_MISS dirn:-2:-2"),
]  # fmt: skip
TENCENT_HIT: Headers = [("X-NWS-LOG-UUID", "13733582990050331190"), ("X-Cache-Lookup", "Cache Hit"), ("Age", "1967830")]
TENCENT_MISS: Headers = [("X-Cache-Lookup", "Cache Miss"), ("X-Cache-Lookup", "Hit From Inner Cluster")]
AZURE_PRIVATE: Headers = [("X-Cache", "PRIVATE_NOSTORE")]
CLOUDFLARE_DYNAMIC: Headers = [("CF-Cache-Status", "DYNAMIC"), ("CF-Ray", "8a3c0f1e9b2d4c7b-PVG")]


@pytest.mark.parametrize(
    ("headers", "status", "source", "edge", "age"),
    [
        (CLOUDFLARE_HIT, "hit", "cf-cache-status", "SJC", 4271.0),
        (CLOUDFRONT_MISS, "miss", "x-cache", "FRA56-P1", None),
        (CLOUDFRONT_REFRESH, "revalidated", "x-cache", "NRT57-C1", 0.0),
        (FASTLY_SHIELD_MISS_EDGE_HIT, "hit", "x-cache", "cache-hkg17927-HKG", 12.0),
        (SQUID_HIT, "hit", "x-cache", "proxy7.example.net", None),
        (AKAMAI_DEBUG, "hit", "server-timing", "a23-52-43-14.deploy.akamaitechnologies.com", None),
        (AKAMAI_SERVER_TIMING_MISS, "miss", "server-timing", None, None),
        (NGINX_STALE, "stale", "x-cache-status", None, None),
        (ALIBABA_HIT, "hit", "x-cache", "kunlun7.cn1481", 1080.0),
        # no Age: the edge's Date (1563862200) minus the time the object was cached (1563861134)
        (ALIBABA_REFRESH_MISS_NO_AGE, "expired", "x-cache", "vcache15.cn838", 1066.0),
        (TENCENT_HIT, "hit", "x-cache-lookup", None, 1967830.0),
        (TENCENT_MISS, "miss", "x-cache-lookup", None, None),
        (AZURE_PRIVATE, "bypass", "x-cache", None, None),
        (CLOUDFLARE_DYNAMIC, "dynamic", "cf-cache-status", "PVG", None),
    ],
)
def test_real_header_sets(headers: Headers, status: str, source: str, edge: str | None, age: float | None) -> None:
    figures, info = cache_facts(headers)
    assert info["cache_status"] == status
    assert info["cache_header"] == source
    assert info.get("edge") == edge
    assert figures["cdn_cache_hit"] == (1.0 if status == "hit" else 0.0)
    assert figures.get("cdn_age_seconds") == age
    assert status in CACHE_STATUSES
    assert all(is_figure_name(name) for name in (*figures, *info))


def test_no_cache_header_gives_nothing() -> None:
    assert cache_facts([("Server", "nginx"), ("Content-Type", "text/html"), ("Content-Length", "12")]) == ({}, {})
    assert cache_facts([]) == ({}, {})


def test_positive_age_alone_is_a_hit_and_zero_age_says_nothing() -> None:
    assert cache_facts([("Age", "30")]) == ({"cdn_cache_hit": 1.0, "cdn_age_seconds": 30.0},
                                            {"cache_status": "hit", "cache_header": "age"})  # fmt: skip
    assert cache_facts([("Age", "0")]) == ({"cdn_age_seconds": 0.0}, {})


def test_the_most_specific_header_wins_and_names_are_case_blind() -> None:
    figures, info = cache_facts([("x-cache", "HIT from proxy"), ("cf-cache-status", "EXPIRED")])
    assert (info["cache_status"], info["cache_header"], figures["cdn_cache_hit"]) == ("expired", "cf-cache-status", 0.0)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([("X-Cache", "Error from cloudfront")], "other"),
        ([("X-Cache", "TCP_SOMETHING_HIT")], "hit"),
        ([("CF-Cache-Status", "NONE")], "miss"),
        ([("X-Cache-Lookup", "Return Directly")], "dynamic"),
        ([("Server-Timing", "cdn-cache-miss, edge;dur=3")], "miss"),
        ([("X-Cache-Status", "BYPASS")], "bypass"),
    ],
)
def test_vendor_words(headers: Headers, status: str) -> None:
    assert cache_facts(headers)[1]["cache_status"] == status


def test_malformed_values_are_ignored_not_raised() -> None:
    figures, info = cache_facts([("Age", "soon"), ("CF-Ray", "nodash"), ("X-Cache", " ")])
    assert figures == {} and "cache_status" not in info and "edge" not in info
    assert cache_facts([("Ali-Swift-Global-Savetime", "x"), ("Date", "not a date")]) == ({}, {})
