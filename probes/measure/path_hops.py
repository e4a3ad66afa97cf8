"""From the probes of a trace to its hops: who answered at each TTL, how fast, how often. Pure functions.

Loss at a hop means little on its own: a router answers probes that expire there from its control
plane, which limits ICMP replies (Linux to about one a second per destination by default), while it
forwards packets in hardware at full rate. So loss is path loss only where it persists: a hop whose
replies go missing more often than those of some hop after it, by more than chance explains (Fisher's
exact test, one-sided, p < 0.001), is labelled `rate_limited`, and the path's own loss is the
destination's. The bar is high because loss that does persist is common and a hop is compared with the
least lossy of the hops after it: at p < 0.05, two hops behind one lossy link (the same true loss)
were told apart as rate limiting in one trace of twenty. A router that limits its replies loses most
of them when probed fast, far past that bar (8 of 10 lost against none beyond is enough).
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec

from qiancheng.core.result import Hop

__all__ = ["ProbeRecord", "Trace", "aggregate", "fingerprint", "rate_limited"]

_SIGNIFICANCE = 0.001


@dataclass(slots=True)
class ProbeRecord:
    """One probe: where it went and, once answered, who answered how, and after how long."""

    flow: int
    ttl: int
    round: int
    responder: str | None = None
    rtt: float | None = None
    reached: bool = False  # the destination itself answered
    unreachable: str | None = None
    mpls: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Trace:
    """The hops of every flow, in flow and TTL order, and where each flow ends."""

    hops: list[Hop]
    #: flow -> the TTL at which the destination answered, None if it never did
    destination_ttl: dict[int, int | None]

    def flow_hops(self, flow: int = 0) -> list[Hop]:
        return [hop for hop in self.hops if hop.flow == flow]

    @property
    def reached(self) -> bool:
        """The destination answered on every flow."""
        return all(ttl is not None for ttl in self.destination_ttl.values())


def aggregate(records: Iterable[ProbeRecord], flows: int) -> Trace:
    """The hops of the probes in `records` (every probe sent, answered or not)."""
    by_flow: dict[int, dict[int, list[ProbeRecord]]] = {flow: {} for flow in range(flows)}
    for record in records:
        by_flow.setdefault(record.flow, {}).setdefault(record.ttl, []).append(record)
    hops: list[Hop] = []
    destination_ttl: dict[int, int | None] = {}
    for flow in sorted(by_flow):
        by_ttl = by_flow[flow]
        reached = [ttl for ttl, probes in by_ttl.items() if any(p.reached for p in probes)]
        end = min(reached) if reached else _last_useful_ttl(by_ttl)
        destination_ttl[flow] = min(reached) if reached else None
        flow_hops = [_hop(flow, ttl, by_ttl.get(ttl, [])) for ttl in sorted(by_ttl) if ttl <= end]
        hops.extend(_label_rate_limiting(flow_hops))
    return Trace(hops, destination_ttl)


def _last_useful_ttl(by_ttl: dict[int, list[ProbeRecord]]) -> int:
    """Where a flow that never reached its destination ends: the last TTL anyone answered at, or an
    unreachable; the silent TTLs after it say nothing more."""
    answered = [ttl for ttl, probes in by_ttl.items() if any(p.responder is not None for p in probes)]
    return max(answered, default=min(by_ttl, default=0))


def _hop(flow: int, ttl: int, probes: list[ProbeRecord]) -> Hop:
    answered = [p for p in probes if p.responder is not None]
    rtts = [p.rtt for p in answered if p.rtt is not None]
    last = max(answered, key=lambda p: p.round, default=None)
    addresses = Counter(p.responder for p in answered if p.responder is not None)
    ranked = [address for address, _ in addresses.most_common()]
    unreachable = next((p.unreachable for p in answered if p.unreachable and not p.reached), None)
    mpls = next((p.mpls for p in reversed(answered) if p.mpls), ())
    sent = len(probes)
    return Hop(
        ttl=ttl,
        flow=flow,
        sent=sent,
        received=len(answered),
        loss_ratio=1 - len(answered) / sent if sent else 0.0,
        address=ranked[0] if ranked else None,
        others=ranked[1:16],
        rtt_min_seconds=min(rtts) if rtts else None,
        rtt_median_seconds=statistics.median(rtts) if rtts else None,
        rtt_max_seconds=max(rtts) if rtts else None,
        rtt_last_seconds=last.rtt if last is not None else None,
        unreachable=unreachable,
        mpls=list(mpls),
    )


def _label_rate_limiting(hops: list[Hop]) -> list[Hop]:
    labelled = []
    for index, hop in enumerate(hops):
        later = [h for h in hops[index + 1 :] if h.received]
        if hop.received and later and rate_limited(hop, min(later, key=lambda h: h.loss_ratio)):
            hop = msgspec.structs.replace(hop, rate_limited=True)
        labelled.append(hop)
    return labelled


def rate_limited(hop: Hop, later: Hop) -> bool:
    """True when `hop` lost significantly more replies than `later`, a hop beyond it: the packets went
    on, so the replies that are missing were not sent (Fisher's exact test, one-sided)."""
    return _fisher_greater(hop.sent - hop.received, hop.received, later.sent - later.received, later.received) < _SIGNIFICANCE


def _fisher_greater(lost_a: int, kept_a: int, lost_b: int, kept_b: int) -> float:
    """One-sided p-value that a's share of lost probes exceeds b's by chance alone (hypergeometric tail)."""
    n_a, lost, total = lost_a + kept_a, lost_a + lost_b, lost_a + kept_a + lost_b + kept_b
    if total == 0 or lost == 0:
        return 1.0
    denominator = math.comb(total, lost)
    tail = sum(math.comb(n_a, k) * math.comb(total - n_a, lost - k) for k in range(lost_a, min(n_a, lost) + 1))
    return tail / denominator


def fingerprint(hops: Sequence[Hop]) -> str:
    """16 hex digits naming the path: the address answering at each TTL of each flow (`*` for none)."""
    text = "|".join(f"{hop.flow}:{hop.ttl}:{hop.address or '*'}" for hop in hops)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
