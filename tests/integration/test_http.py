"""HTTP measurement against real aiohttp and raw servers on loopback, HTTP and HTTPS, compared with curl."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import statistics
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from qiancheng.core.kind_settings import HttpSettings
from qiancheng.core.result import Result, Target
from qiancheng.core.units import Duration, Size
from qiancheng.probes.measure import run
from qiancheng.probes.measure.http import USER_AGENT
from tests.conftest import PYTHON, Processes, free_port, wait_tcp

SLOW_SECONDS = 0.05
EPSILON = 1e-6
PHASES = ("dns_seconds", "connect_seconds", "tls_seconds", "ttfb_seconds")
MARKS = ("time_namelookup_seconds", "time_connect_seconds", "time_appconnect_seconds",
         "time_pretransfer_seconds", "time_starttransfer_seconds", "time_total_seconds")  # fmt: skip


# ---- servers ---------------------------------------------------------------------------------------------


async def _bytes(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * int(request.match_info["size"]))


async def _missing(request: web.Request) -> web.Response:
    return web.Response(status=404, text="no such thing")


async def _chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(5):
        await response.write(b"y" * 1000)
    await response.write_eof()
    return response


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(SLOW_SECONDS)
    return web.Response(text="late")


async def _cdn(request: web.Request) -> web.Response:
    headers = {"X-Cache": "HIT", "CF-Cache-Status": "HIT", "Age": "12", "Via": "1.1 varnish", "Server": "edge-7"}
    return web.Response(text="cached", headers=headers)


def _app() -> web.Application:
    app = web.Application()
    app.router.add_get("/bytes/{size}", _bytes)
    app.router.add_get("/missing", _missing)
    app.router.add_get("/chunked", _chunked)
    app.router.add_get("/slow", _slow)
    app.router.add_get("/cdn", _cdn)
    return app


@dataclass
class Servers:
    http: str  # base URLs
    https: str


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, made by the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def servers(certificate: tuple[Path, Path]) -> AsyncIterator[Servers]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    runner = web.AppRunner(_app(), access_log=None)
    await runner.setup()
    plain = web.TCPSite(runner, "127.0.0.1", 0)
    secure = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await plain.start()
    await secure.start()
    try:
        yield Servers(f"http://127.0.0.1:{_port(plain)}", f"https://127.0.0.1:{_port(secure)}")
    finally:
        await runner.cleanup()


def serve_forever(plain_port: int, tls_port: int, cert: str, key: str) -> None:
    """Entry point of the server process used by the comparison with curl."""

    async def main() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        runner = web.AppRunner(_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", plain_port).start()
        await web.TCPSite(runner, "127.0.0.1", tls_port, ssl_context=context).start()
        await asyncio.Event().wait()

    asyncio.run(main())


@pytest.fixture
def server_process(processes: Processes, certificate: tuple[Path, Path]) -> Servers:
    """The same routes served by another process, so that curl and we both wait on a process switch."""
    plain_port, tls_port = free_port(), free_port()
    code = "import sys; from tests.integration.test_http import serve_forever; serve_forever(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:])"
    processes.start(PYTHON, "-c", code, str(plain_port), str(tls_port), *map(str, certificate), name="http-server")
    wait_tcp(plain_port)
    wait_tcp(tls_port)
    return Servers(f"http://127.0.0.1:{plain_port}", f"https://127.0.0.1:{tls_port}")


def _port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the asyncio server here; port 0 means we must ask it
    assert isinstance(server, asyncio.Server)
    return int(server.sockets[0].getsockname()[1])


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[str]]]:
    """Starts plain TCP servers that answer with exactly the bytes a test wants; yields their base URL."""
    started: list[asyncio.Server] = []

    async def start(handler: RawHandler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        started.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    try:
        yield start
    finally:
        for server in started:
            server.close()
            for sock in server.sockets:
                sock.close()


def _answering(response: bytes, hold: float = 0.0) -> RawHandler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()
            await asyncio.sleep(hold)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return handler


async def _get(url: str, **settings: object) -> Result:
    target = Target(name="web", address=url, target_class="cloud_pool")
    return await run("http", target, HttpSettings(**settings))  # type: ignore[arg-type]


def _assert_phases_sane(result: Result) -> None:
    figures = result.figures
    for name in (*PHASES, "total_seconds", *MARKS):
        assert figures[name] >= 0, name
    assert sum(figures[name] for name in PHASES) <= figures["total_seconds"] + EPSILON
    marks = [figures[name] for name in MARKS if name != "time_appconnect_seconds" or figures[name] > 0]
    assert marks == sorted(marks), marks  # cumulative marks never go back
    assert figures["total_seconds"] == figures["time_total_seconds"]
    assert result.duration_seconds >= figures["total_seconds"]


# ---- behaviour ----------------------------------------------------------------------------------------------


async def test_body_of_known_size(servers: Servers) -> None:
    result = await _get(f"{servers.http}/bytes/12345")
    assert result.success, result
    assert result.kind == "http"
    assert result.figures["status_code"] == 200
    assert result.figures["bytes"] == 12345
    assert result.figures["dns_seconds"] == 0  # IP literal
    assert result.figures["tls_seconds"] == 0 == result.figures["time_appconnect_seconds"]
    assert result.figures["connect_seconds"] > 0
    assert result.info["address"] == "127.0.0.1"
    assert result.info["http_version"] == "1.1"
    assert result.info["server"].startswith("Python/")
    assert "tls_version" not in result.info
    _assert_phases_sane(result)


async def test_large_body_is_counted_to_the_byte(servers: Servers) -> None:
    # past the first read, a Content-Length body is counted without h11 (MSG_TRUNC over plain TCP)
    result = await _get(f"{servers.http}/bytes/{8 * 1024 * 1024 + 7}")
    assert result.success, result
    assert result.figures["bytes"] == 8 * 1024 * 1024 + 7
    _assert_phases_sane(result)


def _head_then_body(head: bytes, body: bytes) -> RawHandler:
    """Sends the head, waits, then the body: the body is read past h11, by counting."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head)
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(body)
            await writer.drain()
            await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return handler


async def test_counted_body_ends_at_its_length(raw_server: Callable[[RawHandler], Awaitable[str]]) -> None:
    # bytes past Content-Length are not the body's (the server misbehaves; we stop at the length)
    url = await raw_server(_head_then_body(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n", b"z" * 300_010))
    result = await _get(url)
    assert result.success, result
    assert result.figures["bytes"] == 300_000
    assert result.figures["time_total_seconds"] - result.figures["time_starttransfer_seconds"] >= 0.04


async def test_counted_body_cut_short_is_protocol(raw_server: Callable[[RawHandler], Awaitable[str]]) -> None:
    url = await raw_server(_head_then_body(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n", b"z" * 1000))
    result = await _get(url)
    assert result.error == "protocol", result
    assert result.detail == "connection closed before the response ended"


async def test_counted_body_past_max_bytes_is_an_error(raw_server: Callable[[RawHandler], Awaitable[str]]) -> None:
    url = await raw_server(_head_then_body(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n", b"z" * 300_000))
    result = await _get(url, max_bytes=Size(100_000))
    assert result.error == "error", result
    assert result.detail == "body exceeds max_bytes"


async def test_header_bytes_are_the_raw_head(raw_server: Callable[[RawHandler], Awaitable[str]]) -> None:
    head = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Pad: abc\r\n\r\n"
    url = await raw_server(_answering(head + b"abc"))
    result = await _get(url)
    assert result.success, result
    assert result.figures["header_bytes"] == len(head)
    assert result.figures["bytes"] == 3


async def test_status_outside_expected_is_http_status(servers: Servers) -> None:
    result = await _get(f"{servers.http}/missing")
    assert not result.success
    assert result.error == "http_status"
    assert result.detail is not None and "404" in result.detail
    assert result.figures["status_code"] == 404
    assert result.figures["bytes"] == len("no such thing")
    _assert_phases_sane(result)


async def test_expected_status_may_include_404(servers: Servers) -> None:
    result = await _get(f"{servers.http}/missing", expected_status=(200, 404))
    assert result.success, result


async def test_chunked_body(servers: Servers) -> None:
    result = await _get(f"{servers.http}/chunked")
    assert result.success, result
    assert result.figures["bytes"] == 5000
    _assert_phases_sane(result)


async def test_close_delimited_body(raw_server: Callable[[RawHandler], Awaitable[str]]) -> None:
    url = await raw_server(_answering(b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 7000))
    result = await _get(url)
    assert result.success, result
    assert result.figures["bytes"] == 7000
    _assert_phases_sane(result)


async def test_slow_first_byte(servers: Servers) -> None:
    result = await _get(f"{servers.http}/slow")
    assert result.success, result
    assert result.figures["ttfb_seconds"] >= SLOW_SECONDS
    assert result.figures["total_seconds"] >= result.figures["ttfb_seconds"]
    assert result.figures["connect_seconds"] < SLOW_SECONDS  # the wait is not charged to connect
    _assert_phases_sane(result)


async def test_head_request(servers: Servers) -> None:
    result = await _get(f"{servers.http}/bytes/5000", method="HEAD")
    assert result.success, result
    assert result.figures["bytes"] == 0


async def test_request_headers(servers: Servers) -> None:
    received: dict[str, str] = {}

    async def capture(request: web.Request) -> web.Response:
        received.update({k.lower(): v for k, v in request.headers.items()})
        return web.Response(text="ok")

    # a server of its own, so that the test sees the headers exactly as they arrived
    app = web.Application()
    app.router.add_get("/", capture)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = _port(site)
        result = await _get(f"http://127.0.0.1:{port}/", headers={"X-Probe": "cz-1", "Accept": "text/plain"})
    finally:
        await runner.cleanup()
    assert result.success, result
    assert received["host"] == f"127.0.0.1:{port}"
    assert received["user-agent"] == USER_AGENT
    assert received["accept"] == "text/plain"  # settings.headers replace the defaults by name
    assert received["connection"] == "close"
    assert received["x-probe"] == "cz-1"


async def test_cdn_headers_become_info(servers: Servers) -> None:
    result = await _get(f"{servers.http}/cdn")
    assert result.success, result
    assert {k: result.info[k] for k in ("x_cache", "cf_cache_status", "age", "via", "server")} == {
        "x_cache": "HIT", "cf_cache_status": "HIT", "age": "12", "via": "1.1 varnish", "server": "edge-7",
    }  # fmt: skip


async def test_body_past_max_bytes_is_an_error(servers: Servers) -> None:
    result = await _get(f"{servers.http}/bytes/200000", max_bytes=Size(1000))
    assert result.error == "error"
    assert result.detail == "body exceeds max_bytes"
    assert result.figures["status_code"] == 200
    assert 1000 < result.figures["bytes"] < 200_000  # stopped early, not after the whole body


async def test_host_name_is_resolved(servers: Servers) -> None:
    # localhost comes from /etc/hosts: resolving it sends nothing on any network
    result = await _get(servers.http.replace("127.0.0.1", "localhost") + "/bytes/10")
    assert result.success, result
    assert result.figures["dns_seconds"] > 0
    assert result.info["address"] in ("127.0.0.1", "::1")
    _assert_phases_sane(result)


async def test_unresolvable_name_is_resolve() -> None:
    # an empty label is refused before any query is sent, so this stays on the machine
    result = await _get("http://bad..test/")
    assert result.error == "resolve", result


async def test_closed_port_is_refused() -> None:
    result = await _get(f"http://127.0.0.1:{free_port()}/")
    assert result.error == "refused", result
    assert "connect_seconds" not in result.figures


async def test_no_response_is_timeout_with_phases_so_far(raw_server: Callable[[RawHandler], Awaitable[str]]) -> None:
    url = await raw_server(_answering(b"", hold=5.0))
    result = await _get(url, timeout=Duration(0.2))
    assert result.error == "timeout"
    assert result.detail is not None and result.detail.startswith("ttfb")
    assert result.figures["connect_seconds"] >= 0
    assert "ttfb_seconds" not in result.figures
    assert 0.2 <= result.duration_seconds < 1.0


async def test_garbage_response_is_protocol(raw_server: Callable[[RawHandler], Awaitable[str]]) -> None:
    url = await raw_server(_answering(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"))
    result = await _get(url)
    assert result.error == "protocol", result


async def test_truncated_body_is_protocol(raw_server: Callable[[RawHandler], Awaitable[str]]) -> None:
    url = await raw_server(_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"))
    result = await _get(url)
    assert result.error == "protocol", result


async def test_bad_header_is_an_error_before_any_traffic(raw_server: Callable[[RawHandler], Awaitable[str]]) -> None:
    url = await raw_server(_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    result = await _get(url, headers={"X-Bad": "line\r\nbreak"})
    assert result.error == "error"
    assert result.detail is not None and result.detail.startswith("bad request")
    assert result.figures == {}


async def test_not_a_url_is_an_error() -> None:
    result = await _get("ftp://127.0.0.1/")
    assert result.error == "error"


# ---- TLS ------------------------------------------------------------------------------------------------------


async def test_https_without_verification(servers: Servers) -> None:
    result = await _get(f"{servers.https}/bytes/4096", verify_tls=False)
    assert result.success, result
    assert result.figures["bytes"] == 4096
    assert result.figures["tls_seconds"] > 0
    assert result.figures["time_appconnect_seconds"] >= result.figures["time_connect_seconds"]
    assert result.info["tls_version"].startswith("TLSv1.")
    _assert_phases_sane(result)


async def test_https_large_body(servers: Servers) -> None:
    result = await _get(f"{servers.https}/bytes/{3 * 1024 * 1024 + 1}", verify_tls=False)
    assert result.success, result
    assert result.figures["bytes"] == 3 * 1024 * 1024 + 1
    _assert_phases_sane(result)


async def test_https_by_name_sends_sni(servers: Servers) -> None:
    result = await _get(servers.https.replace("127.0.0.1", "localhost") + "/bytes/1", verify_tls=False)
    assert result.success, result


async def test_untrusted_certificate_is_tls_error(servers: Servers) -> None:
    result = await _get(f"{servers.https}/bytes/1")
    assert result.error == "tls_error", result
    assert result.detail is not None and "certificate" in result.detail
    assert "connect_seconds" in result.figures and "tls_seconds" not in result.figures


async def test_plain_server_on_https_is_tls_error(servers: Servers) -> None:
    result = await _get(servers.http.replace("http://", "https://") + "/bytes/1", verify_tls=False)
    assert result.error == "tls_error", result


# ---- agreement with curl -------------------------------------------------------------------------------------

_CURL_FORMAT = "%{time_namelookup} %{time_connect} %{time_appconnect} %{time_pretransfer} %{time_starttransfer} %{time_total}"


async def _curl(curl: str, url: str) -> dict[str, float]:
    process = await asyncio.create_subprocess_exec(
        curl, "-s", "-k", "-o", "/dev/null", "--noproxy", "*", "-w", _CURL_FORMAT, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, _ = await process.communicate()
    values = [float(value) for value in output.decode().split()]
    names = ("namelookup", "connect", "appconnect", "pretransfer", "starttransfer", "total")
    return dict(zip(names, values, strict=True))


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("path", ["/bytes/1000", "/slow"])
async def test_connect_and_ttfb_agree_with_curl(server_process: Servers, scheme: str, path: str) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    url = (server_process.https if scheme == "https" else server_process.http) + path
    reports = []
    # Load on a small machine delays one tool or the other by a scheduler slice (ms); such noise does
    # not last, a real disagreement does: up to three rounds, and one round must agree.
    for _ in range(3):
        ours: list[Result] = []
        theirs: list[dict[str, float]] = []
        for _ in range(20):  # interleaved, so that a burst of load hits both alike
            ours.append(await _get(url, verify_tls=False))
            theirs.append(await _curl(curl, url))
        assert all(result.success for result in ours), ours[0]
        connect = (statistics.median(r.figures["connect_seconds"] for r in ours),
                   statistics.median(c["connect"] - c["namelookup"] for c in theirs))  # fmt: skip
        ttfb = (statistics.median(r.figures["ttfb_seconds"] for r in ours),
                statistics.median(c["starttransfer"] - c["pretransfer"] for c in theirs))  # fmt: skip
        reports.append({"connect (ours, curl)": connect, "ttfb (ours, curl)": ttfb})
        if abs(connect[0] - connect[1]) < 0.002 and abs(ttfb[0] - ttfb[1]) < 0.002:
            return
    pytest.fail(f"medians of connect or ttfb differ from curl's by 2 ms or more: {json.dumps(reports)}")
