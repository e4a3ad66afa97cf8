"""The catalogue of kinds: every row is served by a module, configured by settings and rendered by groups."""

from __future__ import annotations

import importlib
import inspect
from typing import get_args

import pytest

from qiancheng.core.kind_settings import KindSettings
from qiancheng.core.kinds import CATALOGUE, EXCLUSIVE_KINDS, KINDS, FigureGroup, Kind, kind_named, kinds_with
from qiancheng.core.result import Result, Target
from qiancheng.probes.render import figures_text


@pytest.mark.parametrize("kind", CATALOGUE, ids=lambda kind: kind.name)
def test_every_kind_has_a_module_with_measure_and_its_settings(kind: Kind) -> None:
    module = importlib.import_module(kind.module)
    assert inspect.iscoroutinefunction(module.measure)
    assert issubclass(kind.settings, KindSettings)
    assert kind.figures and set(kind.figures) <= set(get_args(FigureGroup))


def test_derived_lists_follow_the_catalogue() -> None:
    assert KINDS == ("icmp", "tcp", "dns", "http", "download", "upload", "stamp", "path", "capacity")
    assert EXCLUSIVE_KINDS == {"download", "upload", "capacity"}
    assert kinds_with("round_trips") == ("icmp", "tcp", "stamp")
    assert kinds_with("voice") == ("icmp", "stamp")
    assert kinds_with("cdn") == ("http", "download")
    assert kinds_with("path") == ("path",)
    assert kinds_with("capacity") == ("capacity",)
    with pytest.raises(KeyError):
        kind_named("warp")


def _result(kind: str, figures: dict[str, float], info: dict[str, str] | None = None) -> Result:
    return Result(kind=kind, target=Target(name="t", address="127.0.0.1"), start_ns=1, duration_seconds=0.1,
                  success=True, figures=figures, info=info or {})  # fmt: skip


def test_a_kind_renders_only_its_own_groups() -> None:
    train = {"rtt_min_seconds": 0.001, "rtt_median_seconds": 0.002, "rtt_max_seconds": 0.003,
             "packets_sent": 10, "packets_received": 9, "loss_ratio": 0.1, "mos": 4.2}  # fmt: skip
    assert figures_text(_result("icmp", train)) == "rtt min/med/max 1.000/2.000/3.000 ms  loss 10.0% (9/10)  MOS≈4.20"
    # tcp carries no voice group: a stray mos figure is not shown
    assert figures_text(_result("tcp", train)) == "rtt min/med/max 1.000/2.000/3.000 ms  loss 10.0% (9/10)"
    http = {"dns_seconds": 0.001, "connect_seconds": 0.002, "tls_seconds": 0.0, "ttfb_seconds": 0.004,
            "total_seconds": 0.005, "status_code": 200}  # fmt: skip
    assert figures_text(_result("http", http, {"cache_status": "HIT", "edge": "sha1"})) == (
        "dns/connect/tls/ttfb/total 1.000/2.000/0.000/4.000/5.000 ms  HTTP 200  cache HIT at sha1"
    )
    assert figures_text(_result("warp", train)) == ""
    path = {"hop_count": 6, "destination_reached": 1, "rtt_median_seconds": 0.0123, "loss_ratio": 0.0,
            "rate_limited_hops": 2, "path_changes": 1, "mos": 4.2}  # fmt: skip
    assert figures_text(_result("path", path, {"fingerprint": "00aa", "previous_fingerprint": "11bb"})) == (
        "6 hops, destination reached  rtt med 12.30 ms, loss 0.0%  2 rate-limited hops  path changed (was 11bb)  path 00aa"
    )
    capacity = {"capacity_bits_per_second": 972.3e6, "capacity_ethernet_bits_per_second": 982.9e6,
                "capacity_sub_interval": 7, "sub_intervals": 10, "loss_ratio": 0.0004,
                "rtt_variation_min_seconds": 0.0, "rtt_variation_max_seconds": 0.003}  # fmt: skip
    assert figures_text(_result("capacity", capacity, {"direction": "upload"})) == (
        "upload capacity 972.3 Mbit/s IP layer (982.9 Ethernet) in sub-interval 7 of 10  loss 0.04%  rtt +0.000..+3.000 ms"
    )
