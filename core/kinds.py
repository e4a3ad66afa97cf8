"""The one catalogue of measurement kinds; every other list of kinds is derived from it.

Adding a kind means adding its module, `probes/measure/<name>.py` with `async def measure(target,
settings)`, and one row in CATALOGUE. A row says what configures the kind, whether it fills the access
link, and which groups of figures its results carry: the agent renders those groups for people and the
collector picks the metrics fed by them (only round-trip kinds feed the RTT histogram, for example).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from .kind_settings import (
    CapacitySettings,
    DnsSettings,
    DownloadSettings,
    HttpSettings,
    IcmpSettings,
    KindSettings,
    PathSettings,
    StampSettings,
    TcpSettings,
    UploadSettings,
)

__all__ = ["CATALOGUE", "EXCLUSIVE_KINDS", "KINDS", "FigureGroup", "Kind", "kind_named", "kinds_with"]

#: Groups of figures a result may carry, in the order they are shown:
#: - round_trips: a train of packets (or connects) whose samples are round-trip times, with loss and
#:   delay variation (rtt_*_seconds, loss_ratio, jitter_seconds, packets_sent, ...)
#: - dns: one lookup (lookup_seconds, answer_count, rcode)
#: - http_phases: one request timed by phase (dns, connect, tls, ttfb, total seconds; status_code)
#: - throughput: goodput over parallel streams (throughput_bits_per_second, bytes, window_seconds, ...)
#: - loaded_latency: idle and loaded round trips beside a transfer (responsiveness_rpm, ...)
#: - one_way: forward and backward one-way delays with the clocks' error bound
#: - voice: the E-model estimate (mos, r_factor)
#: - cdn: the CDN cache status and age of the object fetched
#: - path: a traced path (hop_count, destination_reached, path_changes, the destination's RTT and loss)
#:   with its hops
#: - capacity: the maximum IP-layer capacity (RFC 9097) and the loss and delay variation at it
FigureGroup = Literal["round_trips", "dns", "http_phases", "throughput", "loaded_latency", "one_way", "voice", "cdn",
                      "path", "capacity"]


@dataclass(frozen=True, slots=True)
class Kind:
    """One measurement kind: its settings type, whether it runs alone, and the figures it reports."""

    name: str
    settings: type[KindSettings]
    #: fills the access link: two at once would each measure half of it (and disturb every other test),
    #: so a probe runs at most one exclusive kind at a time
    exclusive: bool = False
    figures: tuple[FigureGroup, ...] = ()

    @property
    def module(self) -> str:
        """The agent's module that measures this kind."""
        return f"qiancheng.probes.measure.{self.name}"


CATALOGUE: Final = (
    Kind("icmp", IcmpSettings, figures=("round_trips", "voice")),
    Kind("tcp", TcpSettings, figures=("round_trips",)),
    Kind("dns", DnsSettings, figures=("dns",)),
    Kind("http", HttpSettings, figures=("http_phases", "cdn")),
    Kind("download", DownloadSettings, exclusive=True, figures=("throughput", "loaded_latency", "cdn")),
    Kind("upload", UploadSettings, exclusive=True, figures=("throughput", "loaded_latency")),
    Kind("stamp", StampSettings, figures=("round_trips", "one_way", "voice")),
    Kind("path", PathSettings, figures=("path",)),
    Kind("capacity", CapacitySettings, exclusive=True, figures=("capacity",)),
)

_BY_NAME: Final = {kind.name: kind for kind in CATALOGUE}

#: The kinds' names, in catalogue order (the CLI's choices, the config's keys).
KINDS: Final = tuple(_BY_NAME)

#: Kinds a probe runs one at a time.
EXCLUSIVE_KINDS: Final = frozenset(kind.name for kind in CATALOGUE if kind.exclusive)


def kind_named(name: str) -> Kind:
    """The catalogue row of `name`; KeyError if there is none."""
    return _BY_NAME[name]


def kinds_with(group: FigureGroup) -> tuple[str, ...]:
    """Names of the kinds whose results carry `group`, in catalogue order."""
    return tuple(kind.name for kind in CATALOGUE if group in kind.figures)
