"""CDN cache status and edge identity from HTTP response headers (kinds `http` and `download`).

Status. The first header in this order that says something decides `cache_status` (hit, miss, stale,
expired, revalidated, bypass, dynamic, other) and `cache_header` names it:

- `cf-cache-status` (Cloudflare: HIT, MISS, EXPIRED, STALE, UPDATING, REVALIDATED, BYPASS, DYNAMIC, NONE)
- `x-cache-status` (nginx `$upstream_cache_status`: the same words but DYNAMIC and NONE)
- `server-timing` metric `cdn-cache; desc=HIT` (Akamai) or `cdn-cache-hit` / `cdn-cache-miss`
- `x-cache-lookup` (Tencent Cloud CDN: only "Hit From MemCache", "Hit From Disktank" and "Cache Hit"
  are hits, "Return Directly" is dynamic content, anything else a miss)
- `x-cache` (Squid "HIT from host", CloudFront "Hit from cloudfront" / "RefreshHit ...", Akamai and Azure
  "TCP_HIT", "TCP_REFRESH_HIT", Alibaba Cloud "HIT TCP_MEM_HIT dirn:-2:-2", Fastly "MISS, HIT"): the
  last entry, which is the cache nearest the client; its Squid-style TCP_* code if it has one, else its
  first word
- `age` alone: a positive Age means the response came out of a cache (RFC 9111 §5.1), so a hit

`cdn_cache_hit` is 1 for a hit and 0 for any other status; absent, like `cache_status`, when no header
said anything. `cdn_age_seconds` is Age; without Age, Alibaba Cloud's `Ali-Swift-Global-Savetime` (Unix
time the object entered the cache) against the edge's own `Date` gives the same figure.

Edge. The serving edge's identity, the most specific first: `x-amz-cf-pop` (CloudFront POP, "FRA56-P1"),
the colo suffix of `cf-ray` ("…-SJC"), the last node of Fastly's `x-served-by`, the host of an
`x-cache` "… from host", else the node the last `via` entry names (Alibaba Cloud's
"kunlun7.cn1481[0,200-0,H]" included).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.utils import parsedate_to_datetime

__all__ = ["CACHE_STATUSES", "cache_facts"]

CACHE_STATUSES = ("hit", "miss", "stale", "expired", "revalidated", "bypass", "dynamic", "other")

_EDGE_TEXT_MAX = 128

# Status words of the CDNs and proxies above, lower case, to the status they mean.
_WORDS: dict[str, str] = {
    "hit": "hit", "tcp_hit": "hit", "tcp_mem_hit": "hit", "tcp_ims_hit": "hit", "tcp_remote_hit": "hit",
    "tcp_negative_hit": "hit", "tcp_offline_hit": "hit", "tcp_inm_hit": "hit", "mem_hit": "hit",
    "miss": "miss", "tcp_miss": "miss", "tcp_client_refresh_miss": "miss", "none": "miss",
    "stale": "stale", "updating": "stale", "tcp_refresh_fail_old": "stale", "tcp_refresh_fail_hit": "stale",
    "expired": "expired", "tcp_refresh_miss": "expired", "tcp_refresh_modified": "expired",
    "revalidated": "revalidated", "refreshhit": "revalidated", "tcp_refresh_hit": "revalidated",
    "tcp_refresh_unmodified": "revalidated",
    "bypass": "bypass", "pass": "bypass", "private_nostore": "bypass", "config_nocache": "bypass",
    "dynamic": "dynamic",
}  # fmt: skip
# Tencent Cloud documents exactly these X-Cache-Lookup values as hits.
_TENCENT_HITS = {"hit from memcache", "hit from disktank", "cache hit"}
_TENCENT_DYNAMIC = {"return directly"}

# Commas inside [...] or (...) do not separate list entries (Alibaba Cloud's Via, Via comments).
_LIST_SPLIT = re.compile(r",(?![^\[(]*[\])])")
_COMMENT = re.compile(r"\([^)]*\)|\[[^\]]*\]")


def _entries(value: str) -> list[str]:
    return [entry.strip() for entry in _LIST_SPLIT.split(value) if entry.strip()]


def _word_status(word: str) -> str:
    word = word.lower().strip('"')
    if word in _WORDS:
        return _WORDS[word]
    if word.endswith("hit"):  # other vendors' TCP_*_HIT variants
        return "hit"
    if word.endswith("miss"):
        return "miss"
    return "other"


def _x_cache(values: list[str]) -> tuple[str | None, str | None]:
    """(status, host) of the last X-Cache entry: "HIT from host", "TCP_HIT", "HIT TCP_MEM_HIT …"."""
    entries = [entry for value in values for entry in _entries(value)]
    if not entries:
        return None, None
    words = _COMMENT.sub(" ", entries[-1]).split()
    if not words:
        return None, None
    host = None
    lowered = [word.lower() for word in words]
    if "from" in lowered[1:]:
        after = lowered.index("from", 1) + 1
        if after < len(words) and words[after].lower() != "cloudfront":  # CloudFront names no node here
            host = words[after]
    # Alibaba Cloud pairs a plain word with the Squid-style code ("MISS TCP_REFRESH_MISS"): the code says more.
    code = next((word for word in words if word.lower().startswith("tcp_")), words[0])
    return _word_status(code), host


def _tencent_status(values: list[str]) -> str | None:
    lookups = [entry.lower() for value in values for entry in _entries(value)]
    if not lookups:
        return None
    if any(lookup in _TENCENT_HITS for lookup in lookups):
        return "hit"
    if any(lookup in _TENCENT_DYNAMIC for lookup in lookups):
        return "dynamic"
    return "miss"


def _server_timing_status(values: list[str]) -> str | None:
    for value in values:
        for metric in _entries(value):
            name, *params = (part.strip() for part in metric.split(";"))
            name = name.lower()
            if name in ("cdn-cache-hit", "cdn-cache-miss"):
                return name.removeprefix("cdn-cache-")
            if name == "cdn-cache":
                for param in params:
                    key, _, description = param.partition("=")
                    if key.strip().lower() == "desc" and description.strip():
                        return _word_status(description.strip())
    return None


def _via_node(values: list[str]) -> str | None:
    """The node of the last Via entry: "1.1 node (comment)" → node; "node[…]" → node."""
    entries = [entry for value in values for entry in _entries(value)]
    if not entries:
        return None
    words = _COMMENT.sub(" ", entries[-1]).split()
    if not words:
        return None
    return words[1] if len(words) > 1 else words[0]


def _edge(found: dict[str, list[str]], x_cache_host: str | None) -> str | None:
    if pop := found.get("x-amz-cf-pop"):
        return pop[-1].strip()
    if ray := found.get("cf-ray"):
        _, dash, colo = ray[-1].strip().rpartition("-")
        if dash and colo:
            return colo
    if served_by := found.get("x-served-by"):
        nodes = [entry for value in served_by for entry in _entries(value)]
        if nodes:
            return nodes[-1]
    if x_cache_host:
        return x_cache_host
    if via := found.get("via"):
        return _via_node(via)
    return None


def _age_seconds(found: dict[str, list[str]]) -> float | None:
    if age := found.get("age"):
        try:
            return float(int(age[-1].strip().split(",")[0]))
        except ValueError:
            return None
    saved, date = found.get("ali-swift-global-savetime"), found.get("date")
    if saved and date:
        try:
            seconds = parsedate_to_datetime(date[-1]).timestamp() - int(saved[-1].strip())
        except (TypeError, ValueError):
            return None
        return max(seconds, 0.0)
    return None


def cache_facts(headers: Iterable[tuple[str, str]]) -> tuple[dict[str, float], dict[str, str]]:
    """(figures, info): `cdn_cache_hit`, `cdn_age_seconds`; `cache_status`, `cache_header`, `edge`."""
    found: dict[str, list[str]] = {}
    for name, value in headers:
        found.setdefault(name.strip().lower(), []).append(value)

    status: str | None = None
    source: str | None = None
    x_cache_status, x_cache_host = _x_cache(found.get("x-cache", []))
    for header, values in (
        ("cf-cache-status", found.get("cf-cache-status")),
        ("x-cache-status", found.get("x-cache-status")),
    ):
        if values and values[-1].strip():
            status, source = _word_status(values[-1].strip()), header
            break
    if status is None and (timing := _server_timing_status(found.get("server-timing", []))) is not None:
        status, source = timing, "server-timing"
    if status is None and (tencent := _tencent_status(found.get("x-cache-lookup", []))) is not None:
        status, source = tencent, "x-cache-lookup"
    if status is None and x_cache_status is not None:
        status, source = x_cache_status, "x-cache"
    age = _age_seconds(found)
    if status is None and age is not None and age > 0 and "age" in found:
        status, source = "hit", "age"

    figures: dict[str, float] = {}
    info: dict[str, str] = {}
    if status is not None and source is not None:
        figures["cdn_cache_hit"] = 1.0 if status == "hit" else 0.0
        info["cache_status"] = status
        info["cache_header"] = source
    if age is not None:
        figures["cdn_age_seconds"] = age
    if (edge := _edge(found, x_cache_host)) is not None:
        info["edge"] = edge[:_EDGE_TEXT_MAX]
    return figures, info
