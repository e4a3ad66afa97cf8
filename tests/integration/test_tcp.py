"""TCP connect trains on loopback (IPv4 and IPv6) against the responder, compared with curl's connect
time; refused, unreachable and silent targets are reported as such."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
from collections.abc import Iterator

import pytest

from qiancheng.core.kind_settings import TcpSettings
from qiancheng.core.result import Result, Target
from qiancheng.core.units import Duration
from qiancheng.probes.measure import run
from tests.conftest import PYTHON, Processes, free_port, wait_tcp
from tests.integration.helpers import probe_once_json, require_root, require_tool

TRAIN = TcpSettings(count=20, packet_interval=Duration(0.02), timeout=Duration(1.0))


@pytest.fixture(scope="module")
def responder_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    processes = Processes(tmp_path_factory.mktemp("responder"))
    port = free_port()
    processes.start(PYTHON, "-m", "qiancheng.probes.responder.main", "--listen", "127.0.0.1", "--listen", "::1",
                    "--http-port", str(port), "--echo-port", "0", "--dns-port", "0", "--stamp-port", "0", name="responder")
    try:
        wait_tcp(port)
        yield port
    finally:
        processes.stop_all()


def _measure(address: str, settings: TcpSettings = TRAIN) -> Result:
    return asyncio.run(run("tcp", Target(name="t", address=address), settings))


def _curl_connect_median(url: str, runs: int) -> float:
    curl = require_tool("curl")
    times = []
    for _ in range(runs):
        done = subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{time_connect}", url], capture_output=True, text=True, check=True)
        times.append(float(done.stdout))
    return statistics.median(times)


@pytest.mark.parametrize(("address", "url_host"), [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")])
def test_connect_train_agrees_with_curl(responder_port: int, address: str, url_host: str) -> None:
    host = f"[{address}]" if ":" in address else address
    ours = _measure(f"{host}:{responder_port}")
    curl = _curl_connect_median(f"http://{url_host}:{responder_port}/ping", 20)
    assert ours.success, ours.detail
    assert ours.figures["packets_received"] == 20 and ours.figures["loss_ratio"] == 0
    assert all(s is not None and 0 < s < 0.01 for s in ours.samples)
    assert abs(ours.figures["rtt_median_seconds"] - curl) < 0.5e-3, (ours.figures["rtt_median_seconds"], curl)


def test_a_closed_port_is_refused() -> None:
    result = _measure(f"127.0.0.1:{free_port()}", TcpSettings(count=3, packet_interval=Duration(0.01)))
    assert result.success is False and result.error == "refused"
    assert result.figures["packets_sent"] == 3 and result.figures["packets_lost"] == 3
    assert result.info["failures"] == "refused 3"


def test_a_port_behind_a_drop_rule_times_out() -> None:
    require_root()
    require_tool("nft")
    [result] = probe_once_json(
        "--kind", "tcp", "--count", "3", "--packet-interval", "20ms", "--timeout", "300ms", "127.0.0.1:9",
        setup="nft add table inet t; nft add chain inet t in '{ type filter hook input priority 0; }'; "
              "nft add rule inet t in tcp dport 9 drop",
    )
    assert result["success"] is False and result["error"] == "timeout"
    assert result["figures"]["packets_lost"] == 3
    assert 0.3 <= result["duration_seconds"] < 1.0


def test_a_network_without_a_route_is_unreachable() -> None:
    require_root()
    [result] = probe_once_json("--kind", "tcp", "--count", "2", "198.18.0.1:80", setup="true")
    assert result["success"] is False and result["error"] == "unreachable"
