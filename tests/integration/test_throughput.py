"""Kinds download and upload against the real responder on loopback: success, caps, refusals, URLs.

The measurement runs in the test's event loop (measure.run, as the agent calls it); the responder and
the CDN-like object server are real servers on loopback.
"""

from __future__ import annotations

import json
import os
import pty
import select
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from qiancheng.core.kind_settings import DownloadSettings, ThroughputSettings, UploadSettings
from qiancheng.core.result import Result, Target
from qiancheng.probes import measure
from qiancheng.probes.measure import throughput
from qiancheng.probes.measure.progress import Progress, progress_callback
from tests.conftest import PYTHON, Processes, free_port
from tests.integration.helpers import http_get, require_tool, wait_for

from tests.integration.test_responder import HOST, Responder, start_responder

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
GIB = 1024 * MIB
# short tests: a 1 s window after at most 0.5 s of warm-up
QUICK = {"window": 1.0, "warmup": 0.5, "max_bytes": 36 * GIB}


@pytest.fixture(scope="module")
def responder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Responder]:
    """One responder for this module's tests, with the default limits but for the per-client byte budget:
    these tests move tens of GB a minute at loopback speed, more than the default 16 GiB a minute, and
    the budget has tests of its own (test_responder)."""
    workdir = tmp_path_factory.mktemp("throughput-responder")
    config = workdir / "responder.yaml"
    config.write_text("limits:\n  max_client_bytes_per_minute: 1024GiB\n")
    processes = Processes(workdir)
    try:
        yield start_responder(processes, config)
    finally:
        processes.stop_all()


def _target(responder: Responder) -> Target:
    return Target(name="responder", address=f"{HOST}:{responder.http_port}")


async def _measure(kind: str, target: Target, **settings: object) -> Result:
    settings_type = DownloadSettings if kind == "download" else UploadSettings
    return await measure.run(kind, target, settings_type(**{**QUICK, **settings}))  # type: ignore[arg-type]


def _check_figures(result: Result, streams: int) -> None:
    f = result.figures
    assert result.success, result.detail
    assert f["streams"] == streams
    assert f["throughput_bits_per_second"] > 0
    assert f["throughput_p90_bits_per_second"] > 0
    assert 0 < f["bytes"] <= f["bytes_total"]
    # the per-stream rates add up to the total over the same window
    per_stream = sum(f[f"stream_{i}_bits_per_second"] for i in range(streams))
    assert per_stream == pytest.approx(f["throughput_bits_per_second"], rel=1e-9)
    assert f["bytes"] * 8 / f["window_seconds"] == pytest.approx(f["throughput_bits_per_second"], rel=1e-9)
    assert 0 < f["tcp_rtt_seconds"] < 1


@pytest.mark.parametrize("kind", ["download", "upload"])
async def test_throughput_against_the_responder(responder: Responder, kind: str) -> None:
    updates: list[Progress] = []
    token = progress_callback.set(updates.append)
    try:
        result = await _measure(kind, _target(responder), streams=3)
    finally:
        progress_callback.reset(token)
    _check_figures(result, 3)
    f = result.figures
    assert f["window_seconds"] >= 1.0 and f["warmup_seconds"] <= 0.5 + 0.2
    assert result.info["address"] == HOST
    assert result.info["url"].startswith(f"http://{HOST}:{responder.http_port}/{kind}")
    assert "stopped_by" not in result.info
    # latency on fresh connections beside the load, before and during the window (loaded_latency.py)
    assert f["idle_rtt_seconds"] > 0 and f["loaded_rtt_seconds"] > 0 and f["loaded_probes"] >= 3
    assert f["bufferbloat_seconds"] == pytest.approx(f["loaded_rtt_seconds"] - f["idle_rtt_seconds"])
    assert f["responsiveness_rpm"] > 0
    if kind == "upload":
        assert f["tcp_cwnd_segments"] >= 1 and f["tcp_retransmits"] >= 0
    # the live progress went through warm-up and window, with rates and growing byte counts
    phases = [u.phase for u in updates]
    assert phases[0] == "warmup" and phases[-1] == "window"
    assert [u.bytes_total for u in updates] == sorted(u.bytes_total for u in updates)
    assert max(u.rate_bits_per_second for u in updates) > 0


@pytest.mark.parametrize("kind", ["download", "upload"])
async def test_byte_cap_ends_the_test(responder: Responder, kind: str) -> None:
    cap = 64 * MIB
    result = await _measure(kind, _target(responder), streams=4, max_bytes=cap, window=5.0)
    assert result.success, result.detail
    assert result.info["stopped_by"] == "byte_cap"
    assert result.figures["bytes_total"] <= cap
    # every stream's share arrived: nothing was cut short
    assert result.figures["bytes_total"] == cap


async def test_time_cap_ends_the_test(responder: Responder) -> None:
    result = await _measure("download", _target(responder), streams=2, window=20.0, max_seconds=1.5)
    assert result.success, result.detail
    assert result.info["stopped_by"] == "time_cap"
    assert result.duration_seconds < 1.5 + 1.0
    assert result.figures["window_seconds"] < 1.5


async def test_busy_responder_gives_a_clear_failed_result(processes: Processes, tmp_path: Path) -> None:
    config = tmp_path / "responder.yaml"
    config.write_text("limits:\n  max_concurrent_transfers: 2\n")
    capped = start_responder(processes, config)
    for kind in ("download", "upload"):
        result = await _measure(kind, _target(capped), streams=3)
        assert not result.success
        assert result.error == "http_status"
        assert result.detail is not None and "HTTP 503" in result.detail and "max_concurrent_transfers" in result.detail
    # once the responder has seen the refused test's other streams go, streams within the limit work
    wait_for(lambda: json.loads(http_get(f"{capped.url}/healthz")[1])["transfers"] == 0, 5, "the slots to be free")
    assert (await _measure("download", _target(capped), streams=2)).success


async def test_responder_size_caps_give_clear_failed_results(processes: Processes, tmp_path: Path) -> None:
    config = tmp_path / "responder.yaml"
    config.write_text("limits:\n  max_download_bytes: 1MiB\n  max_upload_bytes: 1MiB\n")
    capped = start_responder(processes, config)
    download = await _measure("download", _target(capped), streams=2, max_bytes=64 * MIB)
    assert (download.success, download.error) == (False, "http_status")
    assert download.detail is not None and "HTTP 400" in download.detail and "max_download_bytes" in download.detail
    upload = await _measure("upload", _target(capped), streams=2, max_bytes=64 * MIB)
    assert (upload.success, upload.error) == (False, "http_status")
    assert upload.detail is not None and "HTTP 413" in upload.detail and "max_upload_bytes" in upload.detail


@pytest.mark.parametrize("kind", ["download", "upload"])
async def test_a_share_over_one_request_is_asked_for_again(responder: Responder, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # a stream's share larger than one request may carry is moved in several requests, one after another
    monkeypatch.setattr(throughput, "REQUEST_BYTES", 16 * MIB)
    result = await _measure(kind, _target(responder), streams=1, max_bytes=64 * MIB, window=5.0)
    assert result.success, result.detail
    assert result.info["stopped_by"] == "byte_cap"
    assert result.figures["bytes_total"] == 64 * MIB


async def test_nothing_listening_is_refused() -> None:
    result = await _measure("download", Target(name="closed", address=f"{HOST}:{free_port()}"))
    assert (result.success, result.error) == (False, "refused")


@pytest.fixture
async def cdn_object() -> AsyncIterator[str]:
    """An HTTP server with one 3 MiB object and CDN-style cache headers, as an edge would answer."""
    body = bytes(range(256)) * (3 * MIB // 256)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"X-Cache": "HIT", "Age": "42", "X-Served-By": "cache-lishui-01"})

    app = web.Application()
    app.router.add_get("/videos/segment.ts", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    try:
        yield f"http://{HOST}:{port}/videos/segment.ts"
    finally:
        await runner.cleanup()


async def test_download_of_any_url_fetches_the_object_again_and_reads_cdn_headers(cdn_object: str) -> None:
    target = Target(name="cdn", address="edge.example.net", target_class="cdn")
    result = await _measure("download", target, url=cdn_object, streams=2)
    assert result.success, result.detail
    assert result.info["url"] == cdn_object
    # the object is 3 MiB; a second of loopback moves far more, so it was fetched again and again
    assert result.figures["bytes_total"] > 10 * 3 * MIB
    assert result.figures["cdn_cache_hit"] == 1
    assert result.figures["cdn_age_seconds"] == 42
    assert result.info["cache_status"] == "hit"
    assert result.figures["loaded_probes"] >= 3  # HEADs of the object beside the load


@pytest.fixture
async def https_object(tmp_path: Path) -> AsyncIterator[str]:
    """An HTTPS server (self-signed certificate for 127.0.0.1, made here by openssl) with one 2 MiB object."""
    openssl = require_tool("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", f"subjectAltName=IP:{HOST}"],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    body = bytes(range(256)) * (2 * MIB // 256)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/object.bin", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port, ssl_context=context).start()
    try:
        yield f"https://{HOST}:{port}/object.bin"
    finally:
        await runner.cleanup()


async def test_https_download_verifies_the_certificate(https_object: str) -> None:
    target = Target(name="tls", address=https_object)
    refused = await _measure("download", target, streams=2)
    assert (refused.success, refused.error) == (False, "tls_error")
    assert refused.detail is not None and "certificate" in refused.detail.lower()
    result = await _measure("download", target, streams=2, verify_tls=False)
    assert result.success, result.detail
    assert result.figures["bytes_total"] > 2 * 2 * MIB


async def test_url_with_an_error_status_fails_with_it(cdn_object: str) -> None:
    missing = cdn_object.replace("segment.ts", "absent.ts")
    result = await _measure("download", Target(name="cdn", address=missing), streams=1)
    assert (result.success, result.error) == (False, "http_status")
    assert result.detail is not None and "HTTP 404" in result.detail


def test_cli_once_download_json(responder: Responder) -> None:
    done = subprocess.run(
        [PYTHON, "-m", "qiancheng.probes.cli", "once", "--json", "--kind", "download", "--streams", "2",
         "--duration", "1s", "--warmup", "500ms", f"{HOST}:{responder.http_port}"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress bar without a terminal, and never with --json
    result = json.loads(done.stdout)
    assert result["kind"] == "download" and result["figures"]["streams"] == 2


def test_cli_once_shows_a_live_progress_bar_on_a_terminal(responder: Responder) -> None:
    # stderr on a pseudo-terminal, as when a person runs the command; stdout still gets the table
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [PYTHON, "-m", "qiancheng.probes.cli", "once", "--kind", "download", "--streams", "2",
             "--duration", "1s", "--warmup", "500ms", f"{HOST}:{responder.http_port}"],
            stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=60,
            env={**os.environ, "TERM": "xterm", "COLUMNS": "120"},
        )
        os.close(terminal)
        terminal = -1
        shown = b""
        while select.select([controller], [], [], 0.5)[0]:
            try:
                piece = os.read(controller, 65536)
            except OSError:  # the terminal side is closed and everything was read
                break
            if not piece:
                break
            shown += piece
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert done.returncode == 0, done.stdout
    text = shown.decode("utf-8", "replace")
    assert "download" in text and "Mbit/s" in text and ("warmup" in text or "window" in text)
    assert "Mbit/s" in done.stdout and "download" in done.stdout


def test_settings_types() -> None:
    assert issubclass(DownloadSettings, ThroughputSettings) and issubclass(UploadSettings, ThroughputSettings)
