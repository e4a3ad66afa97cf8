"""The probe's collector client against real servers on loopback: keep-alive, bounds, deadlines, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from qiancheng.probes.collector_client import CollectorClient
from tests.conftest import free_port

ServerFactory = Callable[[web.Application, float], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    """Starts aiohttp apps on loopback (with a keep-alive timeout); yields their base URLs."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, keepalive: float = 75.0) -> str:
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=keepalive)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[CollectorClient]:
    made = CollectorClient(None, "qiancheng-test/1")
    try:
        yield made
    finally:
        await made.close()


def _echo_app(peers: list[object]) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        body = await request.read()
        headers = {"Retry-After": "7", "X-Seen-Agent": request.headers.get("User-Agent", "")}
        return web.Response(status=201, body=body[::-1] + request.query_string.encode(), headers=headers)

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    return app


async def test_answers_reuse_one_connection(serve: ServerFactory, client: CollectorClient) -> None:
    peers: list[object] = []
    base = await serve(_echo_app(peers), 75.0)
    first = await client.request("POST", f"{base}/echo?a=b%20c", headers={"X-Any": "1"}, body=b"abc",
                                 timeout=5, max_body=1024)  # fmt: skip
    second = await client.request("GET", f"{base}/echo", headers={}, timeout=5, max_body=1024)
    assert (first.status, first.body, first.headers["retry-after"]) == (201, b"cbaa=b c", "7")
    assert first.headers["x-seen-agent"] == "qiancheng-test/1"
    assert (second.status, second.body) == (201, b"")
    assert len(peers) == 2 and peers[0] == peers[1]  # the same client port: one kept-alive connection


async def test_a_connection_the_server_closed_while_idle_is_replaced(serve: ServerFactory, client: CollectorClient) -> None:
    peers: list[object] = []
    base = await serve(_echo_app(peers), 0.1)
    await client.request("POST", f"{base}/echo", headers={}, body=b"1", timeout=5, max_body=1024)
    await asyncio.sleep(0.4)  # the server ends the idle connection
    again = await client.request("POST", f"{base}/echo", headers={}, body=b"12", timeout=5, max_body=1024)
    assert (again.status, again.body) == (201, b"21")
    assert len(peers) == 2 and peers[0] != peers[1]


async def test_a_long_body_is_cut_and_its_connection_not_kept(serve: ServerFactory, client: CollectorClient) -> None:
    peers: list[object] = []

    async def big(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(body=b"x" * 300_000)

    app = web.Application()
    app.router.add_get("/big", big)
    base = await serve(app, 75.0)
    answer = await client.request("GET", f"{base}/big", headers={}, timeout=5, max_body=1000)
    assert answer.status == 200 and answer.body == b"x" * 1000
    whole = await client.request("GET", f"{base}/big", headers={}, timeout=5, max_body=1_000_000)
    assert len(whole.body) == 300_000
    assert len(peers) == 2 and peers[0] != peers[1]


async def test_a_server_that_never_answers_times_out(client: CollectorClient) -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await client.request("GET", f"http://127.0.0.1:{port}/", headers={}, timeout=0.3, max_body=1024)
        assert asyncio.get_running_loop().time() - started < 1.0
    finally:
        server.close()


async def test_refused_and_garbage_are_os_errors(client: CollectorClient) -> None:
    with pytest.raises(ConnectionRefusedError):
        await client.request("GET", f"http://127.0.0.1:{free_port()}/", headers={}, timeout=2, max_body=1024)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectionError, match="bad HTTP answer"):
            await client.request("GET", f"http://127.0.0.1:{port}/", headers={}, timeout=2, max_body=1024)
    finally:
        server.close()


async def test_a_server_closing_before_answering_says_so(client: CollectorClient) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectionError, match="closed the connection before answering"):
            await client.request("POST", f"http://127.0.0.1:{port}/", headers={}, body=b"x", timeout=2, max_body=64)
    finally:
        server.close()


async def test_not_an_http_url_is_a_value_error(client: CollectorClient) -> None:
    with pytest.raises(ValueError, match="not an http"):
        await client.request("GET", "ftp://127.0.0.1/", headers={}, timeout=1, max_body=1)
