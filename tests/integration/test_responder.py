"""qiancheng-responder as a real process on loopback: HTTP, TCP echo and DNS, their limits, its lifecycle."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from qiancheng.core.errors import ConfigError
from qiancheng.probes.responder.config import load_responder_config
from tests.conftest import Processes, free_port, script, wait_tcp
from tests.integration.helpers import http_get, wait_for

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parent.parent / "testdata"
MIB = 1024 * 1024
GIB = 1024 * MIB
HOST = "127.0.0.1"


def free_udp_tcp_port() -> int:
    """A port free for both TCP and UDP on loopback (the DNS service binds both)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for both TCP and UDP")


@dataclass
class Responder:
    """A running responder process and where its services listen."""

    process: subprocess.Popen[bytes]
    http_port: int
    echo_port: int
    dns_port: int
    processes: Processes

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def log(self) -> str:
        return self.processes.log("responder")

    def rss_peak_bytes(self) -> int:
        """Peak resident memory (VmHWM) of the process, in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc status")


def start_responder(processes: Processes, config: Path | None = None) -> Responder:
    http_port, echo_port, dns_port = free_port(), free_port(), free_udp_tcp_port()
    args = [script("qiancheng-responder"), "--listen", HOST, "--http-port", str(http_port),
            "--echo-port", str(echo_port), "--dns-port", str(dns_port), "--stamp-port", "0"]
    if config is not None:
        args += ["--config", str(config)]
    process = processes.start(*args, name="responder")
    for port in (http_port, echo_port, dns_port):
        wait_tcp(port)
    # the sockets listen (and accept) before the servers run and the start is logged
    wait_for(lambda: "responder_started" in processes.log("responder"), 10, "responder_started logged", step=0.05)
    return Responder(process, http_port, echo_port, dns_port, processes)


@pytest.fixture(scope="module")
def responder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Responder]:
    """One responder with the default limits, shared by the tests that do not change them."""
    processes = Processes(tmp_path_factory.mktemp("responder"))
    try:
        yield start_responder(processes)
    finally:
        processes.stop_all()


@pytest.fixture
def capped(processes: Processes, tmp_path: Path) -> Responder:
    """A responder with tiny limits, to reach every cap quickly."""
    config = tmp_path / "responder.yaml"
    config.write_text(
        "limits:\n"
        "  max_download_bytes: 4GiB\n"
        "  max_upload_bytes: 1MiB\n"
        "  max_concurrent_transfers: 1\n"
        "  transfer_stall_timeout: 1s\n"
        "  max_echo_connections: 2\n"
        "  echo_idle_timeout: 1s\n"
    )
    return start_responder(processes, config)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        yield client


def tool(name: str) -> str:
    """Path of a command-line tool, or skip this test saying which is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (tests/install-deps.sh installs it)")
    return path


# --- HTTP ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, MIB, 10 * MIB, 10 * MIB + 12345])
async def test_download_sends_exactly_the_bytes_asked(responder: Responder, session: aiohttp.ClientSession,
                                                      size: int) -> None:
    async with session.get(f"{responder.url}/download", params={"bytes": str(size)}) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(size)
        assert response.headers["Cache-Control"] == "no-store"
        assert "Content-Encoding" not in response.headers
        received = 0
        async for chunk in response.content.iter_chunked(MIB):
            received += len(chunk)
    assert received == size


@pytest.mark.parametrize("size", [MIB, 10 * MIB])
def test_download_with_curl(responder: Responder, size: int) -> None:
    curl = tool("curl")
    out = subprocess.run(
        [curl, "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", f"{responder.url}/download?bytes={size}"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    assert out == f"200 {size}"


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 400),
        ("?bytes=", 400),
        ("?bytes=-1", 400),
        ("?bytes=ten", 400),
        ("?bytes=1.5", 400),
        ("?bytes=1e6", 400),
        ("?bytes=%EF%BC%91", 400),  # a full-width digit: Python's int() would take it, we must not
        (f"?bytes={10 * GIB + 1}", 400),
        ("?bytes=" + "9" * 400, 400),
        ("?bytes=" + "9" * 5000, 400),  # past Python's int() digit limit: must still be a 400, not a 500
    ],
)
async def test_download_bad_parameter_is_4xx_json(responder: Responder, session: aiohttp.ClientSession,
                                                  query: str, status: int) -> None:
    async with session.get(f"{responder.url}/download{query}") as response:
        assert response.status == status
        body = await response.json()
    assert body["field"] == "bytes" and body["error"]


async def test_unknown_route_and_method_are_json(responder: Responder, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{responder.url}/nothing-here") as response:
        assert response.status == 404
        assert (await response.json())["error"]
    async with session.delete(f"{responder.url}/download?bytes=1") as response:
        assert response.status == 405
        assert "GET" in response.headers["Allow"]
        assert (await response.json())["error"]


@pytest.mark.parametrize("size", [0, 1, 3 * MIB + 7])
async def test_upload_counts_every_byte(responder: Responder, session: aiohttp.ClientSession, size: int) -> None:
    async with session.post(f"{responder.url}/upload", data=os.urandom(size)) as response:
        assert response.status == 200
        body = await response.json()
    assert body["bytes"] == size
    assert 0 <= body["duration_seconds"] < 30


async def test_upload_chunked_body_duration_spans_first_to_last_byte(
    responder: Responder, session: aiohttp.ClientSession
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 65536
            await asyncio.sleep(0.1)

    async with session.post(f"{responder.url}/upload", data=body()) as response:
        assert response.status == 200
        result = await response.json()
    assert result["bytes"] == 4 * 65536
    assert 0.25 <= result["duration_seconds"] < 5  # three gaps of 0.1 s between the four pieces


def test_upload_with_curl_and_expect_continue(responder: Responder, tmp_path: Path) -> None:
    curl = tool("curl")
    body = tmp_path / "body.bin"
    body.write_bytes(os.urandom(5 * MIB))  # over 1 MiB, curl sends `Expect: 100-continue`
    out = subprocess.run(
        [curl, "-s", "--data-binary", f"@{body}", "-H", "Content-Type: application/octet-stream",
         f"{responder.url}/upload"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    assert json.loads(out)["bytes"] == 5 * MIB


async def test_ping_and_healthz(responder: Responder, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{responder.url}/ping") as response:
        assert response.status == 200
        assert await response.text() == "pong"
    async with session.get(f"{responder.url}/healthz") as response:
        assert response.status == 200
        health = await response.json()
    assert health["status"] == "ok" and health["max_concurrent_transfers"] == 16


async def test_memory_stays_bounded_while_downloading_1_gib(responder: Responder,
                                                           session: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    received = 0
    async with session.get(f"{responder.url}/download", params={"bytes": str(GIB)}) as response:
        assert response.status == 200
        async for chunk in response.content.iter_chunked(4 * MIB):
            received += len(chunk)
    assert received == GIB
    assert time.monotonic() - started < 10
    # peak resident memory over the process's whole life, this download included
    assert responder.rss_peak_bytes() < 100 * MIB


async def test_memory_stays_bounded_while_uploading_256_mib(responder: Responder,
                                                           session: aiohttp.ClientSession) -> None:
    piece = os.urandom(MIB)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(256):
            yield piece

    async with session.post(f"{responder.url}/upload", data=body()) as response:
        assert (await response.json())["bytes"] == 256 * MIB
    assert responder.rss_peak_bytes() < 100 * MIB


async def test_transfers_over_the_cap_get_503_until_a_slot_frees(capped: Responder) -> None:
    # A download whose client reads nothing holds the only slot until transfer_stall_timeout (1 s).
    stalled = socket.create_connection((HOST, capped.http_port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(f"GET /download?bytes={GIB} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 5
            while True:  # until the server has taken the slot for the stalled download
                async with session.get(f"{capped.url}/healthz") as response:
                    if (await response.json())["transfers"] == 1 or time.monotonic() > deadline:
                        break
                await asyncio.sleep(0.05)
            async with session.get(f"{capped.url}/download?bytes=10") as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "1"
                assert "max_concurrent_transfers" in (await response.json())["error"]
            async with session.post(f"{capped.url}/upload", data=b"abc") as response:
                assert response.status == 503
            # the stalled transfer is cut after 1 s without progress; its slot serves the next one
            await asyncio.sleep(1.5)
            async with session.get(f"{capped.url}/download?bytes=10") as response:
                assert response.status == 200
                assert len(await response.read()) == 10
    finally:
        stalled.close()
    assert "download_stalled" in capped.log()


async def test_upload_over_the_cap_is_413(capped: Responder) -> None:
    async with aiohttp.ClientSession() as session:
        # declared up front: refused before the body is read
        async with session.post(f"{capped.url}/upload", data=b"x" * (MIB + 1)) as response:
            assert response.status == 413
            assert (await response.json())["field"] == "body"

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"x" * (MIB // 2)

        # unannounced (chunked): refused once it passes the cap
        try:
            async with session.post(f"{capped.url}/upload", data=chunked()) as response:
                assert response.status == 413
        except aiohttp.ClientOSError:
            pass  # the server may close while the client still sends: also a refusal
        async with session.post(f"{capped.url}/upload", data=b"x" * MIB) as response:
            assert (await response.json())["bytes"] == MIB  # exactly the cap is allowed


def test_upload_over_the_cap_refused_before_the_body_with_expect(capped: Responder) -> None:
    with socket.create_connection((HOST, capped.http_port), timeout=5) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n")
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head


# --- TCP echo ---------------------------------------------------------------------------------------


async def test_echo_returns_every_byte(responder: Responder) -> None:
    reader, writer = await asyncio.open_connection(HOST, responder.echo_port)
    try:
        for size in (1, 1000, 256 * 1024):
            payload = os.urandom(size)
            writer.write(payload)
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(size), 5) == payload
    finally:
        writer.close()


async def test_echo_under_backpressure_keeps_order_and_bounded_memory(responder: Responder) -> None:
    reader, writer = await asyncio.open_connection(HOST, responder.echo_port)
    piece = os.urandom(MIB)
    sent = hashlib.sha256()
    received = hashlib.sha256()

    async def send() -> None:
        for _ in range(64):
            writer.write(piece)
            sent.update(piece)
            await writer.drain()

    async def receive() -> None:
        remaining = 64 * MIB
        while remaining:
            data = await reader.read(min(remaining, MIB))
            assert data, "echo closed early"
            received.update(data)
            remaining -= len(data)

    await asyncio.wait_for(asyncio.gather(send(), receive()), 20)
    assert received.digest() == sent.digest()
    # a peer that sends but never reads its echoes: the responder stops reading instead of buffering
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            while True:
                writer.write(piece)
                await writer.drain()
    assert responder.rss_peak_bytes() < 100 * MIB
    writer.transport.abort()


async def test_echo_caps_connections_and_closes_idle_ones(capped: Responder) -> None:
    async def open_echo() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # wait_tcp's probe connections may still count against the cap until the server sees them
        # close, so an early refusal is retried
        for _ in range(50):
            reader, writer = await asyncio.open_connection(HOST, capped.echo_port)
            writer.write(b"hi")
            try:
                assert await asyncio.wait_for(reader.readexactly(2), 5) == b"hi"
                return reader, writer
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()
                await asyncio.sleep(0.05)
        raise AssertionError("echo kept refusing while under its cap")

    first = await open_echo()
    second = await open_echo()
    # a third is over max_echo_connections (2): closed at once, nothing echoed
    reader, writer = await asyncio.open_connection(HOST, capped.echo_port)
    writer.write(b"hello")
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(5), 5)
    writer.close()
    # the two idle ones close after echo_idle_timeout (1 s)
    started = time.monotonic()
    for reader, writer in (first, second):
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    assert 0.5 < time.monotonic() - started < 3


# --- DNS -----------------------------------------------------------------------------------------------


def dns_ask(responder: Responder, name: str, rdtype: str, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    ask = dns.query.tcp if tcp else dns.query.udp
    return ask(query, HOST, port=responder.dns_port, timeout=3)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize(
    ("name", "rdtype", "expected"),
    [
        ("qiancheng.test.", "A", "127.0.0.1"),
        ("www.qiancheng.test.", "A", "127.0.0.1"),
        ("Deep.Sub.QIANCHENG.test.", "AAAA", "::1"),
        ("unique-7f3a.qiancheng.test.", "TXT", '"qiancheng responder"'),
    ],
)
def test_dns_answers_names_under_the_zone(responder: Responder, name: str, rdtype: str, expected: str,
                                          tcp: bool) -> None:
    reply = dns_ask(responder, name, rdtype, tcp)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    [rrset] = reply.answer
    assert rrset.name.to_text() == name  # the asker's spelling, case included
    assert rrset.ttl == 0
    assert [r.to_text() for r in rrset] == [expected]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dns_other_types_are_nodata_and_other_names_nxdomain(responder: Responder, tcp: bool) -> None:
    nodata = dns_ask(responder, "mail.qiancheng.test.", "MX", tcp)
    assert nodata.rcode() == dns.rcode.NOERROR and nodata.answer == [] and nodata.flags & dns.flags.AA
    outside = dns_ask(responder, "www.example.com.", "A", tcp)
    assert outside.rcode() == dns.rcode.NXDOMAIN and outside.answer == [] and outside.flags & dns.flags.AA


def test_dns_with_dig(responder: Responder) -> None:
    dig = tool("dig")

    def run(*args: str) -> str:
        return subprocess.run([dig, "-p", str(responder.dns_port), f"@{HOST}", "+time=2", "+tries=1", *args],
                              capture_output=True, text=True, timeout=10, check=True).stdout

    assert run("+short", "www.qiancheng.test", "A").strip() == "127.0.0.1"
    assert run("+short", "+tcp", "www.qiancheng.test", "AAAA").strip() == "::1"
    assert run("+short", "t.qiancheng.test", "TXT").strip() == '"qiancheng responder"'
    full = run("nowhere.example", "A")
    assert "status: NXDOMAIN" in full and " aa" in full.split("flags:")[1].split(";")[0]


def test_dns_garbage_never_kills_the_server(responder: Responder) -> None:
    rng = random.Random(862)
    garbage = [b"", b"\x00", b"hello world", b"\xff" * 12, b"\x12\x34" + b"\x00" * 4 + b"\xff" * 40,
               *(rng.randbytes(rng.randrange(1, 600)) for _ in range(200))]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        for index, datagram in enumerate(garbage):
            sock.sendto(datagram, (HOST, responder.dns_port))
            if index % 20 == 19:
                time.sleep(0.01)  # in bursts the kernel would drop what the socket buffer cannot hold
        time.sleep(0.2)
        # a readable header with an unreadable body gets FORMERR with the query's id
        sock.sendto(b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07truncat", (HOST, responder.dns_port))
        formerr = None
        while formerr is None:
            try:
                reply = sock.recv(600)  # the garbage's own FORMERRs first, then ours
            except TimeoutError:
                break
            if reply[:2] == b"\xab\xcd":
                formerr = reply
        assert formerr is not None and formerr[3] & 0x0F == dns.rcode.FORMERR and formerr[2] & 0x80
    # garbage over TCP: a framed junk message, then junk without framing
    for junk in (struct.pack("!H", 5) + b"abcde", os.urandom(3000)):
        with socket.create_connection((HOST, responder.dns_port), timeout=3) as conn:
            conn.sendall(junk)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(4096):
                pass  # whatever comes, the server must close the connection, not hang
    assert dns_ask(responder, "after.qiancheng.test.", "A").answer[0][0].to_text() == "127.0.0.1"
    assert dns_ask(responder, "after.qiancheng.test.", "A", tcp=True).answer[0][0].to_text() == "127.0.0.1"
    assert responder.process.poll() is None
    assert "Traceback" not in responder.log()


def test_dns_ignores_responses_and_truncates_to_udp_size(responder: Responder, tmp_path: Path) -> None:
    response = dns.message.make_response(dns.message.make_query("x.qiancheng.test.", "A"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.sendto(response.to_wire(), (HOST, responder.dns_port))  # never answer an answer: no loops
        with pytest.raises(TimeoutError):
            sock.recv(600)
    chaos = dns.message.make_query("version.bind.", "TXT", rdclass="CH")
    assert dns.query.udp(chaos, HOST, port=responder.dns_port, timeout=3).rcode() == dns.rcode.REFUSED


# --- process lifecycle -------------------------------------------------------------------------------


def test_bad_config_exits_2_naming_file_and_line(console: Callable[[str], str]) -> None:
    file = DATA / "responder_bad_unknown_key.yaml"
    started = time.monotonic()
    done = subprocess.run([console("qiancheng-responder"), "--config", str(file)], capture_output=True,
                          text=True, timeout=20)
    assert done.returncode == 2
    assert f"{file}:5: limits.max_concurent_transfers: unknown key" in done.stderr
    assert done.stdout == ""
    assert time.monotonic() - started < 10


def test_help_lists_the_options(console: Callable[[str], str]) -> None:
    done = subprocess.run([console("qiancheng-responder"), "--help"], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0
    for option in ("--config", "--listen", "--http-port", "--echo-port", "--dns-port"):
        assert option in done.stdout


def test_busy_port_exits_1_naming_service_and_address(processes: Processes, console: Callable[[str], str]) -> None:
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        busy = holder.getsockname()[1]
        done = subprocess.run(
            [console("qiancheng-responder"), "--listen", HOST, "--http-port", str(free_port()),
             "--echo-port", str(busy), "--dns-port", "0", "--stamp-port", "0"],
            capture_output=True, text=True, timeout=20,
        )
    assert done.returncode == 1
    assert f"echo on {HOST}:{busy}" in done.stderr and "responder_bind_failed" in done.stderr


def test_listens_on_ipv4_and_ipv6_together(processes: Processes, console: Callable[[str], str]) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback (::1) on this machine")
    http_port, dns_port = free_port(), free_udp_tcp_port()
    processes.start(console("qiancheng-responder"), "--listen", HOST, "--listen", "::1", "--http-port", str(http_port),
                    "--echo-port", "0", "--dns-port", str(dns_port), "--stamp-port", "0", name="responder")
    wait_tcp(http_port)
    wait_tcp(http_port, host="::1")
    for host in (HOST, "[::1]"):
        with urllib.request.urlopen(f"http://{host}:{http_port}/ping", timeout=5) as response:
            assert response.read() == b"pong"
    reply = dns.query.udp(dns.message.make_query("v6.qiancheng.test.", "AAAA"), "::1", port=dns_port, timeout=3)
    assert reply.answer[0][0].to_text() == "::1"
    assert f"http={HOST}:{http_port},[::1]:{http_port}" in processes.log("responder")
    assert "echo=off" in processes.log("responder")


def test_sigterm_stops_within_two_seconds_even_mid_transfer(processes: Processes) -> None:
    responder = start_responder(processes)
    assert "responder_started" in responder.log()
    assert f"http={HOST}:{responder.http_port}" in responder.log()
    with socket.create_connection((HOST, responder.http_port)) as stalled:
        stalled.sendall(f"GET /download?bytes={GIB} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        stalled.recv(1024)  # the transfer has begun
        with socket.create_connection((HOST, responder.echo_port)):
            started = time.monotonic()
            responder.process.send_signal(signal.SIGTERM)
            assert responder.process.wait(timeout=5) == 0
            assert time.monotonic() - started < 2.5
    assert "responder_stopped" in responder.log()
    assert "Traceback" not in responder.log()


def _limited(processes: Processes, tmp_path: Path, limits: str) -> Responder:
    config = tmp_path / "responder.yaml"
    config.write_text(f"limits:\n{limits}")
    return start_responder(processes, config)


async def test_rate_limit_responder_transfers_per_client_get_503(processes: Processes, tmp_path: Path) -> None:
    limited = _limited(processes, tmp_path, "  max_concurrent_transfers: 4\n  max_transfers_per_client: 1\n"
                                            "  transfer_stall_timeout: 2s\n")  # fmt: skip
    stalled = socket.create_connection((HOST, limited.http_port))  # from 127.0.0.1, reading nothing
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(f"GET /download?bytes={GIB} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    try:
        async with aiohttp.ClientSession() as session, aiohttp.ClientSession(connector=other) as elsewhere:
            wait_for(lambda: json.loads(http_get(f"{limited.url}/healthz")[1])["transfers"] == 1, 5,
                     "the stalled download to hold its slot")  # fmt: skip
            async with session.get(f"{limited.url}/download?bytes=10") as response:
                assert response.status == 503 and response.headers["Retry-After"] == "1"
                assert "max_transfers_per_client" in (await response.json())["error"]
            async with elsewhere.get(f"{limited.url}/download?bytes=10") as response:  # another client address
                assert response.status == 200 and len(await response.read()) == 10
    finally:
        stalled.close()


async def test_rate_limit_responder_bytes_per_client_per_minute_get_429(processes: Processes, tmp_path: Path) -> None:
    limited = _limited(processes, tmp_path, "  max_download_bytes: 1MiB\n  max_upload_bytes: 1MiB\n"
                                            "  max_client_bytes_per_minute: 2MiB\n")  # fmt: skip
    other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession() as session, aiohttp.ClientSession(connector=other) as elsewhere:
        # the budget is charged with what each transfer moved, when it ends: the third one puts it in debt
        for _ in range(3):
            async with session.get(f"{limited.url}/download?bytes={MIB}") as response:
                assert response.status == 200 and len(await response.read()) == MIB
        async with session.get(f"{limited.url}/download?bytes={MIB}") as response:
            assert response.status == 429
            assert 20 <= int(response.headers["Retry-After"]) <= 31  # 1 MiB of debt at 2 MiB a minute
            assert "max_client_bytes_per_minute" in (await response.json())["error"]
        async with session.post(f"{limited.url}/upload", data=b"x" * MIB) as response:  # declared length
            assert response.status == 429
        async with elsewhere.post(f"{limited.url}/upload", data=b"x" * MIB) as response:
            assert response.status == 200 and (await response.json())["bytes"] == MIB


def test_rate_limit_responder_budget_must_hold_the_largest_transfer(tmp_path: Path) -> None:
    config = tmp_path / "responder.yaml"
    config.write_text("limits:\n  max_download_bytes: 4GiB\n  max_client_bytes_per_minute: 1GiB\n")
    with pytest.raises(ConfigError) as caught:
        load_responder_config(config)
    assert caught.value.field == "limits.max_client_bytes_per_minute" and caught.value.line == 3
