"""Where on the path a breach lies: the hop a breach is blamed on, from the target's traced paths.

When a breach opens on a target, the probe's latest trace of that target from before the trouble
(the baseline) is set beside its latest trace since (now). Per hop (flow 0, by TTL):

- loss: when the destination's loss rose, the blamed hop is the first from which loss persists to
  the end: every hop from it on loses at least half the destination's share (a rate-limited hop loses
  replies only at itself, so it is never where loss starts);
- unreachable: when the destination answered before and does not now, the hop after the last one
  that answered (where everything is lost);
- delay: otherwise, when the destination's median RTT rose, the first hop whose own median rose by more
  than `share` of that end-to-end rise.

The hop is then placed: `probe_side` within the first `edge_hops` hops (the city's access and metro
network), `target_side` within the last `edge_hops` before and at the destination (the pool's own
network), `transit` between. Nothing is blamed without both traces, or when neither loss nor delay
rose at the destination.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import msgspec

from qiancheng.core.logs import kv
from qiancheng.core.result import Hop, Result

from ..records import StoredResult
from ..store import StoreError
from .judge import Judgement

__all__ = ["Blame", "Blamer", "PathHistory", "blame", "DEFAULT_SHARE", "DEFAULT_EDGE_HOPS"]

log = logging.getLogger("qiancheng.collector.sla")

DEFAULT_SHARE = 0.5
DEFAULT_EDGE_HOPS = 2
#: a rise smaller than this is not a rise: clocks and queues move RTTs by tens of µs between traces
_MIN_RTT_RISE_SECONDS = 0.0005
_MIN_LOSS_RISE = 0.02

Segment = Literal["probe_side", "transit", "target_side"]


class Blame(msgspec.Struct, frozen=True):
    """The hop a breach is blamed on: its TTL and address (and the address before, if the path changed
    there), the segment it lies in, whether loss or delay pointed at it, and the figures that did."""

    hop: int
    address: str | None
    segment: Segment
    reason: Literal["loss", "rtt"]
    #: the hop's own rise (seconds for rtt, loss ratio for loss) and the destination's
    hop_rise: float
    end_to_end_rise: float
    hops: int  # hops to the destination now
    baseline_start_ns: int  # the traces compared
    now_start_ns: int
    previous_address: str | None = None


def _main(result: Result) -> dict[int, Hop]:
    return {hop.ttl: hop for hop in result.hops if hop.flow == 0}


def _segment(ttl: int, hops: int, edge_hops: int) -> Segment:
    if ttl <= edge_hops:
        return "probe_side"
    if ttl > hops - edge_hops:
        return "target_side"
    return "transit"


def blame(baseline: Result, now: Result, share: float = DEFAULT_SHARE, edge_hops: int = DEFAULT_EDGE_HOPS) -> Blame | None:
    """The hop to blame between two traces of one target, or None (see the module's description)."""
    before, after = _main(baseline), _main(now)
    if not after or not before:
        return None
    ttls = sorted(after)
    end = ttls[-1]
    if baseline.figures.get("destination_reached") and not now.figures.get("destination_reached"):
        # nothing gets through beyond the last hop that answered: the loss starts at the next one
        hops_before, ttl = max(before), end + 1
        old = before.get(ttl)
        return Blame(hop=ttl, address=None, segment=_segment(ttl, hops_before, edge_hops), reason="loss",
                     hop_rise=1.0 - (old.loss_ratio if old else 0.0), end_to_end_rise=1.0 - before[hops_before].loss_ratio,
                     hops=hops_before, baseline_start_ns=baseline.start_ns, now_start_ns=now.start_ns,
                     previous_address=old.address if old else None)  # fmt: skip
    destination, destination_before = after[end], before[max(before)]
    found: tuple[int, str, float, float] | None = None
    loss_rise = destination.loss_ratio - destination_before.loss_ratio
    if loss_rise >= _MIN_LOSS_RISE:
        for index, ttl in enumerate(ttls):
            if min(after[t].loss_ratio for t in ttls[index:]) >= destination.loss_ratio / 2:
                found = (ttl, "loss", after[ttl].loss_ratio - (before[ttl].loss_ratio if ttl in before else 0.0), loss_rise)
                break
    if found is None and destination.rtt_median_seconds is not None and destination_before.rtt_median_seconds is not None:
        rtt_rise = destination.rtt_median_seconds - destination_before.rtt_median_seconds
        if rtt_rise >= _MIN_RTT_RISE_SECONDS:
            for ttl in ttls:
                hop, old = after[ttl], before.get(ttl)
                if hop.rtt_median_seconds is None or old is None or old.rtt_median_seconds is None:
                    continue
                rise = hop.rtt_median_seconds - old.rtt_median_seconds
                if rise > share * rtt_rise:
                    found = (ttl, "rtt", rise, rtt_rise)
                    break
    if found is None:
        return None
    ttl, reason, hop_rise, end_to_end = found
    old_address = before[ttl].address if ttl in before else None
    return Blame(
        hop=ttl, address=after[ttl].address, segment=_segment(ttl, end, edge_hops), reason=reason,  # type: ignore[arg-type]
        hop_rise=hop_rise, end_to_end_rise=end_to_end, hops=end, baseline_start_ns=baseline.start_ns,
        now_start_ns=now.start_ns, previous_address=old_address if old_address != after[ttl].address else None,
    )  # fmt: skip


class PathHistory(Protocol):
    """Where the traced paths are read from (the SQLite store, or the SLA window cache)."""

    async def path_before(self, probe_id: str, target: str, before_ns: int) -> StoredResult | None:
        """The latest `path` result of (probe, target) that started before `before_ns`."""
        ...


_Key = tuple[str, str, str, str, str, int]  # probe, target, kind, profile, objective, breach since


@dataclass(slots=True)
class Blamer:
    """Blames each open breach once both traces exist; keeps the blame while the breach lasts. It reads
    `history` once the judgement has a source (None until then: nothing is blamed)."""

    history: PathHistory | None
    judging_window_seconds: float
    share: float = DEFAULT_SHARE
    edge_hops: int = DEFAULT_EDGE_HOPS
    _blames: dict[_Key, Blame] = field(default_factory=dict, init=False, repr=False)

    @staticmethod
    def _key(judgement: Judgement) -> _Key:
        s = judgement.series
        return (s.probe, s.target, s.kind, judgement.profile.name, judgement.objective.name, judgement.state.since_ns)

    def blame_of(self, judgement: Judgement) -> Blame | None:
        """The blame of the judgement's breach, if it is one and a hop could be named."""
        return self._blames.get(self._key(judgement)) if judgement.state.status == "breach" else None

    async def update(self, judgements: Sequence[Judgement], now_ns: int) -> None:
        """Blame the breaches of the latest pass that have no blame yet; forget closed ones."""
        open_keys = {self._key(j): j for j in judgements if j.state.status == "breach" and j.series.kind != "path"}
        self._blames = {key: found for key, found in self._blames.items() if key in open_keys}
        traces: dict[tuple[str, str, int], Blame | None] = {}  # several objectives of one target share it
        for key, judgement in open_keys.items():
            if key in self._blames:
                continue
            probe, target, since = judgement.series.probe, judgement.series.target, judgement.state.since_ns
            # the trouble began no later than the first bad judging window before the breach opened
            trouble_ns = since - int(self.judging_window_seconds * 1e9)
            if (probe, target, trouble_ns) not in traces:
                traces[(probe, target, trouble_ns)] = await self._compare(probe, target, trouble_ns, now_ns)
            found = traces[(probe, target, trouble_ns)]
            if found is not None:
                self._blames[key] = found
                log.info(kv("sla_blamed", probe=probe, target=target, objective=judgement.objective.name,
                            hop=found.hop, address=found.address, segment=found.segment, reason=found.reason))  # fmt: skip

    async def _compare(self, probe: str, target: str, trouble_ns: int, now_ns: int) -> Blame | None:
        if self.history is None:
            return None
        try:
            baseline = await self.history.path_before(probe, target, trouble_ns)
            now = await self.history.path_before(probe, target, now_ns + 1)
        except StoreError as error:
            log.warning(kv("sla_blame_read_failed", error=error))
            return None
        if baseline is None or now is None or now.result.start_ns < trouble_ns:
            return None  # no trace from before the trouble, or none since it began
        return blame(baseline.result, now.result, self.share, self.edge_hops)
