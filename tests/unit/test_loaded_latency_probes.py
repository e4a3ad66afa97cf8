"""LatencyProbes against real servers on loopback: the responder, an HTTPS server, a closed port, a mute one."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from qiancheng.probes.measure.loaded_latency import LatencyProbes, responsiveness
from tests.conftest import Processes, free_port
from tests.integration.helpers import Responder, require_tool

CONTRACT_FIGURES = {"idle_rtt_seconds", "loaded_rtt_seconds", "bufferbloat_seconds", "responsiveness_rpm", "idle_rpm",
                    "loaded_probes"}  # fmt: skip


async def _loaded_for(probes: LatencyProbes, seconds: float) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    await probes.run_loaded(stop)


async def test_responder_ping_probes_give_every_figure(processes: Processes) -> None:
    responder = Responder(processes)
    responder.start()
    probes = LatencyProbes(f"http://127.0.0.1:{responder.http_port}/download?bytes=100000000", interval=0.05)
    await probes.measure_idle(rounds=5)
    await _loaded_for(probes, 0.5)
    figures = probes.figures()

    assert CONTRACT_FIGURES <= set(figures)
    idle, loaded = probes.idle_round_trips(), probes.loaded_round_trips()
    assert (len(idle.tcp), len(idle.tls), len(idle.http)) == (5, 0, 5)  # plain http: no TLS round trip
    assert 5 <= figures["loaded_probes"] <= 11  # one every 50 ms for 0.5 s, the last may be cut off
    assert len(loaded.tcp) >= figures["loaded_probes"] and len(loaded.http) == figures["loaded_probes"]
    assert figures["loaded_probes_failed"] == 0
    assert 0 < figures["idle_rtt_seconds"] < 0.05 and 0 < figures["loaded_rtt_seconds"] < 0.05
    assert figures["bufferbloat_seconds"] == pytest.approx(figures["loaded_rtt_seconds"] - figures["idle_rtt_seconds"])
    assert figures["responsiveness_rpm"] == pytest.approx(responsiveness(loaded, tls=False))
    assert figures["idle_rpm"] == pytest.approx(responsiveness(idle, tls=False))
    assert figures["idle_rpm"] > 1200  # below 50 ms per round trip on loopback, whatever else runs


async def test_address_is_where_probes_go_whatever_the_url_names(processes: Processes) -> None:
    responder = Responder(processes)
    responder.start()
    # .invalid never resolves (RFC 6761): every probe must go to `address`, as the load's streams do
    probes = LatencyProbes(f"http://responder.invalid:{responder.http_port}/ping", address="127.0.0.1")
    await probes.measure_idle(rounds=3)
    idle = probes.idle_round_trips()
    assert (len(idle.tcp), len(idle.http)) == (3, 3) and "idle_rpm" in probes.figures()


@pytest.fixture
async def https_port(tmp_path: Path) -> AsyncIterator[int]:
    """An HTTPS server (aiohttp, self-signed certificate) serving /video.mp4 on loopback."""
    openssl = require_tool("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/video.mp4", _small_object)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    yield port
    await runner.cleanup()


async def _small_object(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * 1000, content_type="video/mp4")


async def test_https_probes_time_the_tls_handshake_and_head_the_url(https_port: int) -> None:
    probes = LatencyProbes(f"https://127.0.0.1:{https_port}/video.mp4", verify_tls=False, interval=0.05)
    await probes.measure_idle(rounds=4)
    await _loaded_for(probes, 0.3)
    figures = probes.figures()

    idle, loaded = probes.idle_round_trips(), probes.loaded_round_trips()
    assert (len(idle.tcp), len(idle.tls), len(idle.http)) == (4, 4, 4)
    assert len(loaded.tls) >= figures["loaded_probes"] >= 3
    assert figures["loaded_probes_failed"] == 0
    assert figures["responsiveness_rpm"] == pytest.approx(responsiveness(loaded, tls=True))
    assert figures["idle_rpm"] == pytest.approx(responsiveness(idle, tls=True))


async def test_untrusted_certificate_is_a_tls_failure(https_port: int) -> None:
    probes = LatencyProbes(f"https://127.0.0.1:{https_port}/video.mp4", verify_tls=True, interval=0.05)
    await probes.measure_idle(rounds=2)
    await _loaded_for(probes, 0.2)
    figures = probes.figures()

    assert probes.failures["tls_error"] >= 2 and set(probes.failures) == {"tls_error"}
    assert len(probes.idle_round_trips().tcp) == 1  # the first failure ends the idle probes; its TCP
    assert not probes.idle_round_trips().tls  # handshake still counts as a round trip
    assert "idle_rpm" not in figures and "responsiveness_rpm" not in figures  # no TLS or HTTP round trip
    assert figures["loaded_probes"] == 0


async def test_closed_port_gives_refused_and_no_latency_figures() -> None:
    probes = LatencyProbes(f"http://127.0.0.1:{free_port()}/download?bytes=1", interval=0.05)
    await probes.measure_idle(rounds=2)
    await _loaded_for(probes, 0.2)
    figures = probes.figures()

    assert probes.failures["refused"] >= 2
    assert not {"idle_rtt_seconds", "loaded_rtt_seconds", "bufferbloat_seconds", "responsiveness_rpm"} & set(figures)
    assert figures["loaded_probes"] == 0 and figures["loaded_probes_failed"] == probes.failures["refused"]


async def test_round_trips_under_way_when_the_load_stops_are_cut_off_not_failed() -> None:
    # A listener that never accepts: the kernel completes handshakes, no request is ever answered.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(64)
        port = mute.getsockname()[1]
        probes = LatencyProbes(f"http://127.0.0.1:{port}/download?bytes=1", interval=0.05, timeout=5.0)
        async with asyncio.timeout(2.0):  # the stop must not wait for the probes' 5 s timeout
            await _loaded_for(probes, 0.3)
        figures = probes.figures()
        loaded = probes.loaded_round_trips()

    assert len(loaded.tcp) >= 3 and not loaded.http
    assert figures["loaded_probes"] == 0 and figures["loaded_probes_failed"] == 0
    assert "responsiveness_rpm" not in figures and "loaded_rtt_seconds" in figures


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        LatencyProbes("ftp://127.0.0.1/")
    with pytest.raises(ValueError, match="positive"):
        LatencyProbes("http://127.0.0.1/ping", interval=0)
