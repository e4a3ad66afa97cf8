"""What a measurement produces: a typed, immutable result in base units (seconds, bytes, bit/s, ratios)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Final

import msgspec

from .errors import QianchengError

__all__ = [
    "BadKey",
    "BadName",
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

Text = Annotated[str, msgspec.Meta(max_length=1024)]

# Names and keys are checked in __post_init__ (Target's and Result's), not by a `pattern` in the type:
# msgspec runs that regex on every value it decodes (about half the time to decode an icmp result, a
# quarter of the collector's CPU per result), while the same few dozen kinds, classes, target names and
# figure names recur in every batch, so a set of values already accepted answers almost every check at C
# speed. The schema still documents each pattern. __post_init__ also runs when a struct is built in code,
# so a name is checked however it was made.
_KEYS_SCHEMA: Final = msgspec.Meta(extra_json_schema={"propertyNames": {"pattern": FIGURE_PATTERN}})
#: the pattern of a kind, a target class and a failure reason
WORD_PATTERN: Final = r"^[a-z][a-z0-9_]{0,31}$(?!\n)"


class BadName(QianchengError, ValueError):
    """A name that does not match its pattern; `field` names where it was (`kind`, `name`, `figures`, ...)."""

    def __init__(self, field: str, value: object, pattern: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"Expected `str` matching regex {pattern!r}")


class BadKey(BadName):
    """A `figures` or `info` key that does not match FIGURE_PATTERN; `field` names the mapping."""

    def __init__(self, field: str, key: object) -> None:
        super().__init__(field, key, FIGURE_PATTERN)
        self.key = key
        # a key is at most as long as the body that carried it: show its start and its length
        shown = f"{key[:64]!r}... ({len(key)} characters)" if isinstance(key, str) and len(key) > 72 else repr(key)
        self.args = (f"Invalid key {shown}: expected `str` matching regex {FIGURE_PATTERN!r}",)


class _Vocabulary:
    """Values already found to match `pattern`, so that a value seen before costs a set lookup. Bounded:
    past `limit` values (a sender inventing fresh valid names), new ones are checked each time."""

    def __init__(self, pattern: str, limit: int) -> None:
        self.pattern = pattern
        self._search = re.compile(pattern).search  # search, as msgspec applies a pattern
        self.known: set[str] = set()
        self._limit = limit

    def check(self, field: str, value: object) -> None:
        if value in self.known:
            return
        if not isinstance(value, str) or self._search(value) is None:
            raise BadName(field, value, self.pattern)
        if len(self.known) < self._limit:
            self.known.add(value)

    def check_keys(self, field: str, mapping: Mapping[str, object]) -> None:
        if mapping.keys() <= self.known:
            return
        for key in mapping:
            try:
                self.check(field, key)
            except BadName:
                raise BadKey(field, key) from None


_words = _Vocabulary(WORD_PATTERN, 4096)
_names = _Vocabulary(NAME_PATTERN, 65536)  # target names: a fleet's targets, a few dozen per city
_figure_names = _Vocabulary(FIGURE_PATTERN, 4096)
Word = Annotated[str, msgspec.Meta(extra_json_schema={"pattern": WORD_PATTERN})]


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What was measured: a name, an address (host, IP, host:port or URL) and a class such as `edge`."""

    name: Annotated[str, msgspec.Meta(extra_json_schema={"pattern": NAME_PATTERN})]
    address: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    target_class: Word = msgspec.field(default="edge", name="class")

    def __post_init__(self) -> None:
        if self.name in _names.known and self.target_class in _words.known:
            return  # the usual case, answered without a call
        _names.check("name", self.name)
        _words.check("class", self.target_class)


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
    `samples` holds the per-packet round-trip times in seconds, None for a packet lost (for `capacity`,
    the IP-layer rate of each sub-interval, bit/s); `hops` the path
    a `path` result traced, in flow and TTL order. `seq` is 0 until the spool numbers the result.
    """

    kind: Word
    target: Target
    start_ns: Annotated[int, msgspec.Meta(ge=0)]
    duration_seconds: Annotated[float, msgspec.Meta(ge=0)]
    success: bool
    error: Word | None = None
    detail: Text | None = None
    figures: Annotated[dict[str, float], _KEYS_SCHEMA] = {}
    info: Annotated[dict[str, Text], _KEYS_SCHEMA] = {}
    samples: Annotated[list[float | None], msgspec.Meta(max_length=100_000)] = []
    hops: Annotated[list[Hop], msgspec.Meta(max_length=MAX_HOPS)] = []
    seq: Annotated[int, msgspec.Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        # msgspec also calls this after decoding (wire, spool), turning BadName into a ValidationError at the
        # result's path; decode_batch then narrows that path to the field
        if (self.kind in _words.known and self.error is None and self.figures.keys() <= _figure_names.known
                and self.info.keys() <= _figure_names.known):  # fmt: skip
            return  # the usual case, answered without a call
        _words.check("kind", self.kind)
        if self.error is not None:
            _words.check("error", self.error)
        _figure_names.check_keys("figures", self.figures)
        _figure_names.check_keys("info", self.info)


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
