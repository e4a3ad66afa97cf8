"""RFC 9946 on loopback: our client against the responder's server, both directions, signed and not,
and the server's refusals (capacity exceeded, authentication, a wrong jumbo setting) and its watchdog.

Loopback has no bottleneck, so these tests check the exchange, the search and the bookkeeping, not a
capacity figure; the shaped links of tests/netlab check the figures against their truth."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qiancheng.core.errors import MeasurementError
from qiancheng.core.udpst.auth import KeyTable
from qiancheng.core.udpst.capacity import maximum
from qiancheng.core.udpst.client import CapacityTest, run_test
from qiancheng.core.udpst.pdu import Setup, SetupAnswer
from qiancheng.core.udpst.rates import ip_bits_per_second, sending_rates
from qiancheng.probes.responder.udpst import UdpstLimits, UdpstServer
from tests.conftest import Processes, free_port, has_ipv6_loopback, script

pytestmark = pytest.mark.asyncio
KEYS = KeyTable({1: b"firstkey", 7: b"city-key-7"})


@dataclass
class Served:
    server: UdpstServer
    port: int


async def serve(limits: UdpstLimits = UdpstLimits(), keys: KeyTable | None = None) -> Served:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    server = UdpstServer(sock, limits, keys)
    server.start()
    return Served(server, sock.getsockname()[1])


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    running = await serve()
    try:
        yield running
    finally:
        running.server.close()


@pytest.mark.parametrize("upstream", [False, True], ids=["downstream", "upstream"])
async def test_a_test_each_way_runs_its_duration_and_closes_every_sub_interval(served: Served, upstream: bool) -> None:
    started = time.monotonic()
    results = await run_test("127.0.0.1", served.port, CapacityTest(upstream=upstream, duration_s=5))
    elapsed = time.monotonic() - started
    assert 5.0 <= elapsed < 7.5, "the server stops the test 0.5 s past its duration"
    (connection,) = results
    assert connection.stopped_by == "server" and len(connection.sub_intervals) == 5
    capacity = maximum([connection.sub_intervals])
    assert capacity is not None
    # the search climbs 10 Mbit/s a trial (20 a second) from 0: by the last sub-interval it sends
    # hundreds of Mbit/s, and loopback delivers it all
    assert capacity.maximum.ip_bits_per_second > 200e6 and capacity.maximum.index >= 4
    assert capacity.maximum.loss <= capacity.maximum.datagrams * 0.01
    rates = [r.ip_bits_per_second for r in capacity.sub_intervals]
    assert rates == sorted(rates), "nothing stops the climb on loopback"
    await asyncio.sleep(0.1)
    assert served.server.completed == 1 and not served.server._tests, "the server ended its side too"


async def test_a_fixed_rate_is_kept_and_measured_at_the_ip_layer(served: Served) -> None:
    row = 50  # 50 Mbit/s at the IP layer: five 1250-byte packets every 1 ms
    (connection,) = await run_test("127.0.0.1", served.port, CapacityTest(duration_s=5, rate_index=row))
    capacity = maximum([connection.sub_intervals])
    assert capacity is not None
    for sub_interval in capacity.sub_intervals[1:]:  # the first holds the load's random 5-50 ms start
        assert sub_interval.ip_bits_per_second == pytest.approx(ip_bits_per_second(sending_rates()[row]), rel=0.03)


async def test_signed_tests_need_the_servers_key() -> None:
    running = await serve(keys=KEYS)
    try:
        (connection,) = await run_test("127.0.0.1", running.port, CapacityTest(duration_s=5, rate_index=20,
                                                                               key=b"city-key-7", key_id=7))  # fmt: skip
        assert connection.activation.auth.mode == 1 and len(connection.sub_intervals) == 5
        with pytest.raises(MeasurementError, match="not signed with our key|authentication failed"):
            await run_test("127.0.0.1", running.port, CapacityTest(duration_s=5, key=b"wrong", key_id=7))
        with pytest.raises(MeasurementError, match="requires authentication"):
            await run_test("127.0.0.1", running.port, CapacityTest(duration_s=5))
        assert running.server.answers[SetupAnswer.AUTH_REQUIRED] == 1
    finally:
        running.server.close()


async def test_declared_bandwidth_past_the_servers_is_capacity_exceeded() -> None:
    running = await serve(UdpstLimits(max_bandwidth_mbps=100))
    try:
        with pytest.raises(MeasurementError, match="requires a maximum bandwidth"):
            await run_test("127.0.0.1", running.port, CapacityTest(duration_s=5))
        first = asyncio.create_task(run_test("127.0.0.1", running.port, CapacityTest(duration_s=5, rate_index=10,
                                                                                    max_bandwidth_mbps=80)))  # fmt: skip
        await asyncio.sleep(0.5)
        with pytest.raises(MeasurementError, match="capacity exceeded"):
            await run_test("127.0.0.1", running.port, CapacityTest(duration_s=5, max_bandwidth_mbps=30))
        # the other direction has its own bandwidth
        upstream = await run_test("127.0.0.1", running.port, CapacityTest(upstream=True, duration_s=5, rate_index=10,
                                                                          max_bandwidth_mbps=30))  # fmt: skip
        assert len(upstream[0].sub_intervals) == 5 and len((await first)[0].sub_intervals) == 5
    finally:
        running.server.close()


async def test_a_mismatched_setting_is_refused_and_an_unactivated_port_is_reaped(served: Served) -> None:
    with pytest.raises(MeasurementError, match="jumbo setting differs"):
        await run_test("127.0.0.1", served.port, CapacityTest(duration_s=5, jumbo=False))
    # a setup whose test is never activated: its port is closed after 3 s, and nothing was sent to it
    loop = asyncio.get_running_loop()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.setblocking(False)
        await loop.sock_sendto(client, Setup().pack(), ("127.0.0.1", served.port))
        answer = Setup.unpack(await asyncio.wait_for(loop.sock_recv(client, 2048), 2))
        assert answer.answer == SetupAnswer.ACK and served.server._tests
        null = await asyncio.wait_for(loop.sock_recv(client, 2048), 2)
        assert null[:2] == b"\xde\xad" and len(null) == 48, "the Null Request, smaller than the setup"
        await asyncio.sleep(3.6)
        assert not served.server._tests, "reaped by the watchdog"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.sock_recv(client, 2048), 0.2)  # no load ever came
    finally:
        client.close()


async def test_connections_of_one_test_add_up(served: Served) -> None:
    results = await run_test("127.0.0.1", served.port, CapacityTest(duration_s=5, connections=3, rate_index=20))
    assert [r.index for r in results] == [0, 1, 2] and all(len(r.sub_intervals) == 5 for r in results)
    capacity = maximum([r.sub_intervals for r in results])
    assert capacity is not None
    assert capacity.sub_intervals[-1].ip_bits_per_second == pytest.approx(3 * 20e6, rel=0.05)


HOSTS = ["127.0.0.1", "::1"] if has_ipv6_loopback() else ["127.0.0.1"]


async def _setup_answer(host: str, port: int) -> Setup | None:
    """The control port's answer to an unsigned Setup Request, or None while nothing listens."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((host, port))
        try:
            await loop.sock_sendall(sock, Setup().pack())
            return Setup.unpack(await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.2))
        except (OSError, TimeoutError):
            return None


async def test_the_responder_process_serves_rfc_9946_on_every_listen_address(tmp_path: Path) -> None:
    processes = Processes(tmp_path)
    port = free_port(socket.SOCK_DGRAM)
    keys = tmp_path / "udpst.keys"
    keys.write_text("# the fleet's capacity keys\n1,firstkey\n")
    listen = [arg for host in HOSTS for arg in ("--listen", host)]
    config = tmp_path / "responder.yaml"
    config.write_text(f"udpst_key_file: {keys}\nlimits: {{udpst_tests_per_client: 2}}\n")
    processes.start(script("qiancheng-responder"), "--config", str(config), *listen, "--http-port", "0",
                    "--echo-port", "0", "--dns-port", "0", "--stamp-port", "0", "--udpst-port", str(port),
                    name="responder")  # fmt: skip
    try:
        for host in HOSTS:
            deadline = time.monotonic() + 15
            while (answer := await _setup_answer(host, port)) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert answer is not None and answer.answer == SetupAnswer.AUTH_REQUIRED, "keys configured: signed tests only"
            results = await run_test(host, port, CapacityTest(upstream=host != "127.0.0.1", duration_s=5, rate_index=30,
                                                              key=b"firstkey", key_id=1))  # fmt: skip
            capacity = maximum([results[0].sub_intervals], ipv6=":" in host)
            assert capacity is not None and capacity.sub_intervals[-1].ip_bits_per_second == pytest.approx(30e6, rel=0.03)
        started = processes.log("responder")
        assert "udpst_keys=on" in started and f"{port}" in started.split("responder_started", 1)[1].split("\n", 1)[0]
    finally:
        processes.stop_all()


async def _run(*command: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_once_kind_capacity_reports_rfc_9097s_figures_and_refuses_bad_settings(tmp_path: Path) -> None:
    processes = Processes(tmp_path)
    port = free_port(socket.SOCK_DGRAM)
    processes.start(script("qiancheng-responder"), "--http-port", "0", "--echo-port", "0", "--dns-port", "0",
                    "--stamp-port", "0", "--udpst-port", str(port), name="responder")  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while await _setup_answer("127.0.0.1", port) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        code, out, err = await _run(script("qiancheng-probe"), "once", "--kind", "capacity", "--direction", "upload",
                                    "--fixed-rate", "40", "--duration", "5s", "--json", f"127.0.0.1:{port}")  # fmt: skip
        assert code == 0, err
        result = json.loads(out)
        figures, info = result["figures"], result["info"]
        assert result["kind"] == "capacity" and result["success"]
        assert figures["capacity_bits_per_second"] == pytest.approx(40e6, rel=0.03)
        assert figures["capacity_ethernet_bits_per_second"] == pytest.approx(40e6 * 1264 / 1250, rel=0.03)
        assert figures["sub_intervals"] == 5 and figures["loss_ratio"] == 0 and len(result["samples"]) == 5
        assert info == {"address": "127.0.0.1", "port": str(port), "direction": "upload", "layer": "ip",
                        "algorithm": "fixed", "protocol_version": "20", "authenticated": "no", "stopped_by": "server"}
    finally:
        processes.stop_all()
    code, _, err = await _run(script("qiancheng-probe"), "once", "--kind", "capacity", "--duration", "2s", "127.0.0.1")
    assert code == 2 and "--duration must be whole seconds within 5..3600" in err
