"""`qiancheng-probe once --kind stamp` against a real `qiancheng-responder` on loopback (IPv4 and IPv6)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qiancheng.core.stamp_packet import ErrorEstimate, build_sender_packet, local_error_estimate
from tests.conftest import Processes, free_port, has_ipv6_loopback, script, wait_tcp

FIGURES = ("rtt_median_seconds", "forward_delay_median_seconds", "backward_delay_median_seconds",
           "clock_error_seconds", "clock_synchronized", "reordered", "mos", "r_factor", "jitter_seconds")


HOSTS = ["127.0.0.1", "::1"] if has_ipv6_loopback() else ["127.0.0.1"]


def _wait_reflector(host: str, port: int, timeout: float = 15.0) -> None:
    """Until the reflector answers a STAMP packet (a UDP port has no listen state to wait for)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    packet = bytes(build_sender_packet(0, time.time_ns(), ErrorEstimate(False, 1, 1)))
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.1)
        while time.monotonic() < deadline:
            try:
                sock.sendto(packet, (host, port))
                if len(sock.recv(100)) == len(packet):
                    return
            except OSError:  # refused (not bound yet) or timed out
                time.sleep(0.05)
    raise AssertionError(f"no STAMP reflector answered on {host} port {port} within {timeout} s")


def _free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


@pytest.fixture(scope="module")
def reflector_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    processes = Processes(tmp_path_factory.mktemp("stamp-responder"))
    port = _free_udp_port()
    listen = [arg for host in HOSTS for arg in ("--listen", host)]
    processes.start(script("qiancheng-responder"), *listen, "--http-port", "0", "--echo-port", "0",
                    "--dns-port", "0", "--stamp-port", str(port), name="responder")
    try:
        for host in HOSTS:
            _wait_reflector(host, port)
        yield port
    finally:
        processes.stop_all()


def _once(*args: str) -> dict[str, object]:
    done = subprocess.run([script("qiancheng-probe"), "once", "--json", "--kind", "stamp", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 1), done.stderr
    [result] = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert isinstance(result, dict)
    return result


def _default_ttl(host: str) -> int:
    key = "ipv6/conf/all/hop_limit" if ":" in host else "ipv4/ip_default_ttl"
    return int(Path(f"/proc/sys/net/{key}").read_text())


@pytest.mark.parametrize("host", HOSTS)
def test_a_train_against_the_responder(reflector_port: int, host: str) -> None:
    target = f"[{host}]:{reflector_port}" if ":" in host else f"{host}:{reflector_port}"
    result = _once("--count", "20", "--packet-interval", "10ms", "--timeout", "1s", target)
    assert result["success"] is True, result
    figures = result["figures"]
    assert isinstance(figures, dict)
    assert figures["packets_sent"] == figures["packets_received"] == 20
    assert figures["loss_ratio"] == 0 and figures["duplicates"] == 0 and figures["late"] == 0
    assert all(name in figures for name in FIGURES), sorted(figures)
    samples = result["samples"]
    # On loopback the round trip without the reflector's residence is a few µs: about what the send path,
    # whose shortest recent time the reflector adds to T3, varies by from one reply to the next, so a
    # reply that left sooner than any of the last 64 comes out at 0 (the sender's floor), never below.
    assert isinstance(samples, list) and len(samples) == 20 and all(s is not None and s >= 0 for s in samples)
    assert 0 <= figures["rtt_min_seconds"] <= figures["rtt_median_seconds"] <= figures["rtt_max_seconds"] < 1.0
    assert figures["rtt_median_seconds"] > 0
    # both ends run on this host: the clock error stated is twice what this host's kernel states
    assert figures["clock_error_seconds"] == pytest.approx(2 * local_error_estimate().seconds, rel=0.5)
    assert figures["clock_synchronized"] == float(local_error_estimate().synchronized)
    info = result["info"]
    assert isinstance(info, dict)
    # nothing forwards on loopback: our packets and the replies arrive with the TTL they were sent with
    assert info["reflector_ttl"] == info["reply_ttl"] == str(_default_ttl(host))
    assert info["receive_timestamps"] == info["send_timestamps"] == "kernel" and info["address"] == host


def test_port_and_padding_options(reflector_port: int) -> None:
    result = _once("--count", "5", "--packet-interval", "10ms", "--port", str(reflector_port), "--size", "1000",
                   "127.0.0.1")
    assert result["success"] is True, result
    info = result["info"]
    assert isinstance(info, dict) and info["port"] == str(reflector_port) and info["size_bytes"] == "1000"


def test_no_reflector_is_refused() -> None:
    result = _once("--count", "3", "--packet-interval", "10ms", "--timeout", "300ms", f"127.0.0.1:{_free_udp_port()}")
    assert result["success"] is False and result["error"] == "refused"
    assert result["samples"] == [None, None, None]


def test_a_packet_size_below_the_stamp_layout_is_a_usage_error() -> None:
    done = subprocess.run([script("qiancheng-probe"), "once", "--kind", "stamp", "--size", "43", "127.0.0.1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--size" in done.stderr


def test_stamp_port_0_turns_the_reflector_off(processes: Processes) -> None:
    http_port = free_port()
    processes.start(script("qiancheng-responder"), "--listen", "127.0.0.1", "--http-port", str(http_port),
                    "--echo-port", "0", "--dns-port", "0", "--stamp-port", "0", name="responder")
    wait_tcp(http_port)
    deadline = time.monotonic() + 10
    while "responder_started" not in processes.log("responder") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert " stamp=off " in processes.log("responder")
