"""ICMP echo trains on loopback (IPv4 and IPv6): figures agree with fping, replies are routed to the right
train when hundreds share one socket, loss and the unprivileged paths are reported as such."""

from __future__ import annotations

import asyncio
import statistics
import subprocess

import pytest

from qiancheng.core.kind_settings import IcmpSettings
from qiancheng.core.result import Result, Target
from qiancheng.core.units import Duration
from qiancheng.probes.measure import run, run_group
from tests.integration.helpers import probe_once_json, require_root, require_tool

TRAIN = IcmpSettings(count=20, packet_interval=Duration(0.01), timeout=Duration(0.5))


def _measure(address: str, settings: IcmpSettings = TRAIN) -> Result:
    return asyncio.run(run("icmp", Target(name="t", address=address), settings))


def _fping_median(address: str, count: int) -> float:
    fping = require_tool("fping")
    done = subprocess.run([fping, "-C", str(count), "-p", "10", "-q", address], capture_output=True, text=True)
    # `-C` prints "addr : 0.05 0.04 - ..." on stderr, in milliseconds, "-" for a lost packet
    values = [float(v) / 1e3 for v in done.stderr.split(" : ", 1)[1].split() if v != "-"]
    assert values, done.stderr
    return statistics.median(values)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_loopback_train_agrees_with_fping(address: str) -> None:
    require_root()
    ours = _measure(address)
    fping = _fping_median(address, 20)
    assert ours.success, ours.detail
    figures = ours.figures
    assert figures["packets_sent"] == figures["packets_received"] == 20
    assert figures["loss_ratio"] == 0 and figures["duplicates"] == 0 and figures["late"] == 0
    assert len(ours.samples) == 20 and all(s is not None and 0 < s < 0.005 for s in ours.samples)
    assert figures["rtt_min_seconds"] <= figures["rtt_median_seconds"] <= figures["rtt_max_seconds"]
    assert ours.info["address"] == address and ours.info["socket"] == "raw"
    assert ours.info["send_timestamps"] == "kernel"  # SO_TIMESTAMPING software send times were read
    assert abs(figures["rtt_median_seconds"] - fping) < 0.1e-3, (figures["rtt_median_seconds"], fping)


def test_many_concurrent_trains_get_their_own_replies() -> None:
    require_root()
    addresses = [f"127.1.{i // 200}.{i % 200 + 1}" for i in range(300)] + ["::1"]
    settings = IcmpSettings(count=5, packet_interval=Duration(0.02), timeout=Duration(1.0))

    async def all_at_once() -> list[Result]:
        return await asyncio.gather(*(run("icmp", Target(name=f"t{i}", address=a), settings) for i, a in enumerate(addresses)))

    results = asyncio.run(all_at_once())
    for address, result in zip(addresses, results):
        assert result.info["address"] == address
        assert result.figures["packets_received"] == 5, (address, result.figures)
        assert result.figures["duplicates"] == 0


def test_a_silent_host_is_total_loss_not_an_error() -> None:
    require_root()
    [result] = probe_once_json(
        "--kind", "icmp", "--count", "4", "--packet-interval", "20ms", "--timeout", "300ms", "127.0.0.1",
        setup="echo 1 > /proc/sys/net/ipv4/icmp_echo_ignore_all",
    )
    assert result["success"] is False and result["error"] == "loss"
    assert result["figures"]["packets_sent"] == 4 and result["figures"]["packets_lost"] == 4
    assert result["samples"] == [None] * 4


def test_without_raw_sockets_a_ping_socket_is_used() -> None:
    require_root()
    results = probe_once_json(
        "--kind", "icmp", "--count", "5", "--packet-interval", "10ms", "127.0.0.1", "::1",
        setup="echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range", drop_net_raw=True,
    )
    assert [r["info"]["socket"] for r in results] == ["dgram", "dgram"]
    assert [r["info"]["send_timestamps"] for r in results] == ["kernel", "kernel"]
    assert all(r["success"] and r["figures"]["packets_received"] == 5 for r in results)


def test_without_any_icmp_privilege_the_result_says_how_to_grant_it() -> None:
    require_root()
    [result] = probe_once_json(
        "--kind", "icmp", "127.0.0.1", setup="echo '1 0' > /proc/sys/net/ipv4/ping_group_range", drop_net_raw=True
    )
    assert result["success"] is False and result["error"] == "permission"
    assert "CAP_NET_RAW" in result["detail"] and "ping_group_range" in result["detail"]


def test_a_group_gives_each_test_the_result_it_would_get_alone() -> None:
    require_root()
    settings = IcmpSettings(count=3, packet_interval=Duration(0.01), timeout=Duration(0.5))
    targets = [Target(name=f"t{i}", address=a) for i, a in enumerate(["127.0.0.1", "::1", "127.77.0.9", "127.77.0.10"])]
    targets.append(Target(name="bad", address="[::1"))  # no closing bracket: fails alone, not the group

    async def grouped_then_alone() -> tuple[list[Result], list[Result]]:
        grouped = await run_group("icmp", [(target, settings) for target in targets])
        return grouped, [await run("icmp", target, settings) for target in targets]

    grouped, alone = asyncio.run(grouped_then_alone())
    for together, by_itself in zip(grouped, alone):
        assert together.target == by_itself.target
        assert (together.success, together.error, together.detail) == (by_itself.success, by_itself.error, by_itself.detail)
        assert together.info == by_itself.info and list(together.figures) == list(by_itself.figures)
        assert len(together.samples) == len(by_itself.samples)
    for result in grouped[:-1]:
        assert result.success and result.figures["packets_received"] == 3 and result.info["send_timestamps"] == "kernel"
        assert all(s is not None and 0 < s < 0.005 for s in result.samples)
        assert result.duration_seconds < 0.4  # ended at its last reply, not at the timeout
    assert grouped[-1].error == "error" and "bracket" in (grouped[-1].detail or "")
