"""What a measurement produces: a typed, immutable result in base units (seconds, bytes, bit/s, ratios)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Final

import msgspec

from .errors import QianchengError

__all__ = [
    "BadKey",
    "FIGURE_PATTERN",
    "REASONS",
    "TARGET_CLASSES",
    "Target",
    "Hop",
    "Result",
    "failure",
]

#: Target classes operators use; free-form classes are allowed if they match NAME_PATTERN.
TARGET_CLASSES: Final = ("edge", "cloud_pool", "cdn", "dns", "national_hub", "regional_hub", "idc")

#: Failure reasons a result may carry in `error`.
REASONS: Final = (
    "timeout",  # no answer within the test's timeout
    "refused",  # TCP RST / ICMP port unreachable
    "unreachable",  # host or network unreachable, no route
    "permission",  # the probe lacks a privilege (raw sockets need root or CAP_NET_RAW)
    "resolve",  # a name could not be resolved to an address
    "nxdomain",  # DNS: the name does not exist
    "servfail",  # DNS: the resolver failed
    "dns_error",  # DNS: any other bad rcode or malformed answer
    "tls_error",  # TLS handshake or certificate failure
    "http_status",  # HTTP status other than the expected one
    "protocol",  # the peer spoke something we could not parse
    "loss",  # every packet of a train was lost
    "error",  # anything else; `detail` says what
)

NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$(?!\n)"
FIGURE_PATTERN: Final = r"^[a-z][a-z0-9_]{0,63}$(?!\n)"
_figure_name = re.compile(FIGURE_PATTERN)

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
Text = Annotated[str, msgspec.Meta(max_length=1024)]

# The keys of `figures` and `info` are checked in Result.__post_init__, not by a `pattern` on the dict's key
# type: msgspec runs that regex on every key of every result (about 70% of the time to decode an icmp
# result), while the same few dozen names recur in every result, so a set of names already accepted
# answers almost every key at C speed. The schema still documents the pattern.
_KEYS_SCHEMA: Final = msgspec.Meta(extra_json_schema={"propertyNames": {"pattern": FIGURE_PATTERN}})
_accepted_keys: set[str] = set()
# bounds the memory a sender inventing fresh valid names can take; past it, new names are checked each time
_MAX_ACCEPTED_KEYS: Final = 4096


class BadKey(QianchengError, ValueError):
    """A `figures` or `info` key that does not match FIGURE_PATTERN; `field` names the mapping."""

    def __init__(self, field: str, key: object) -> None:
        self.field = field
        self.key = key
        # a key is at most as long as the body that carried it: show its start and its length
        shown = f"{key[:64]!r}... ({len(key)} characters)" if isinstance(key, str) and len(key) > 72 else repr(key)
        super().__init__(f"Invalid key {shown}: expected `str` matching regex {FIGURE_PATTERN!r}")


def _check_keys(field: str, mapping: Mapping[str, object]) -> None:
    if mapping.keys() <= _accepted_keys:
        return
    for key in mapping:
        if key in _accepted_keys:
            continue
        if not isinstance(key, str) or not is_figure_name(key):
            raise BadKey(field, key)
        if len(_accepted_keys) < _MAX_ACCEPTED_KEYS:
            _accepted_keys.add(key)


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What was measured: a name, an address (host, IP, host:port or URL) and a class such as `edge`."""

    name: Name
    address: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    target_class: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$(?!\n)")] = msgspec.field(
        default="edge", name="class"
    )


Address = Annotated[str, msgspec.Meta(max_length=64)]  # an IPv4 or IPv6 address as text
Seconds = Annotated[float, msgspec.Meta(ge=0)]

#: the most hops one result carries: 8 flows of 64 TTLs (PathSettings' bounds)
MAX_HOPS: Final = 512


class Hop(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One TTL of one flow of a path (kind `path`): who answered, how fast, how often.

    `address` is the router (or the destination) that answered most often at this TTL, None when none
    did; `others` are further addresses that answered at the same TTL of the same flow (a per-packet
    load balancer or a route that changed during the trace). RTTs are over the replies received.
    `loss_ratio` is the share of probes without a reply, as mtr shows it; `rate_limited` says that this
    loss does not persist to the later hops (the router limits its ICMP replies; packets pass), so it
    is not path loss. `unreachable` is the code of an ICMP destination unreachable answered at this
    TTL (`host`, `network`, `prohibited`, `port`, ...); `mpls` the label stack the router quoted
    (RFC 4950); `asn` from the probe's prefix table; `name` the reverse name when asked for.
    """

    ttl: Annotated[int, msgspec.Meta(ge=1, le=255)]
    sent: Annotated[int, msgspec.Meta(ge=0)]
    received: Annotated[int, msgspec.Meta(ge=0)]
    loss_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)]
    flow: Annotated[int, msgspec.Meta(ge=0, le=63)] = 0
    address: Address | None = None
    rtt_min_seconds: Seconds | None = None
    rtt_median_seconds: Seconds | None = None
    rtt_max_seconds: Seconds | None = None
    rtt_last_seconds: Seconds | None = None
    rate_limited: bool = False
    unreachable: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$(?!\n)")] | None = None
    mpls: Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=0xFFFFF)]], msgspec.Meta(max_length=16)] = []
    asn: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)] | None = None
    name: Annotated[str, msgspec.Meta(max_length=255)] | None = None
    others: Annotated[list[Address], msgspec.Meta(max_length=16)] = []


class Result(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One test of one kind against one target.

    `figures` holds the numbers in base units under stable names (for example `rtt_median_seconds`,
    `loss_ratio`, `packets_sent`); `info` holds text facts (rcode, resolved address, HTTP version);
    `samples` holds the per-packet round-trip times in seconds, None for a packet lost; `hops` the path
    a `path` result traced, in flow and TTL order. `seq` is 0 until the spool numbers the result.
    """

    kind: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$(?!\n)")]
    target: Target
    start_ns: Annotated[int, msgspec.Meta(ge=0)]
    duration_seconds: Annotated[float, msgspec.Meta(ge=0)]
    success: bool
    error: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$(?!\n)")] | None = None
    detail: Text | None = None
    figures: Annotated[dict[str, float], _KEYS_SCHEMA] = {}
    info: Annotated[dict[str, Text], _KEYS_SCHEMA] = {}
    samples: Annotated[list[float | None], msgspec.Meta(max_length=100_000)] = []
    hops: Annotated[list[Hop], msgspec.Meta(max_length=MAX_HOPS)] = []
    seq: Annotated[int, msgspec.Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        # msgspec also calls this after decoding (wire, spool), turning BadKey into a ValidationError at the
        # result's path; decode_batch then narrows that path to the mapping
        _check_keys("figures", self.figures)
        _check_keys("info", self.info)


def failure(
    kind: str,
    target: Target,
    start_ns: int,
    duration_seconds: float,
    reason: str,
    detail: str = "",
    figures: dict[str, float] | None = None,
) -> Result:
    """A result that says the test failed, and why (one of REASONS)."""
    return Result(
        kind=kind,
        target=target,
        start_ns=start_ns,
        duration_seconds=max(0.0, duration_seconds),
        success=False,
        error=reason,
        detail=detail[:1024] or None,
        figures=figures or {},
    )


def is_figure_name(name: str) -> bool:
    """True if `name` may be used as a figure or info key."""
    # fullmatch: `$` alone would also accept a name followed by a newline
    return _figure_name.fullmatch(name) is not None
