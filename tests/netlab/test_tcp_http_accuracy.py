"""TCP connect and HTTP(S) phases agree with curl's `-w` timings on the same link, in the same run.

A client namespace reaches a server namespace over a plain veth and over the delay relay (5 ms each
way). The server runs the responder (plain HTTP) beside a small HTTPS server with a certificate made
here by openssl, and dnsmasq, which the client's resolv.conf points to, so that the dns phase is a real
lookup over the same link for both tools; every request asks a fresh name under the link's domain, so
no cache answers it. Our probe (one worker process in the client namespace) and curl take turns in
blocks of 10 requests, 50 requests each per case, so that a burst of load on this shared machine hits
both alike; the medians of each phase must agree within 0.5 ms, over IPv4 and IPv6.

Both tools run warm, as a long-running probe does: curl makes each block's transfers in one process
after three extra transfers that are discarded, since the first TLS transfers of a curl process carry
OpenSSL's lazy setup (up to 2.5 ms here) in their TLS phase; our worker likewise discards its first
request.
"""

from __future__ import annotations

import itertools
import shutil
import statistics
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, ROOT
from tests.integration.helpers import require_root, require_tool
from tests.netlab.lab import Lab, Link, Netns
from tests.netlab.relay import RelaySettings
from tests.netlab.servers.probe_worker import RAISED_PRIORITY, ProbeWorker
from tests.netlab.servers.resolver import LOCAL_ZONE, start_resolver

RUNS = 50
BLOCK = 10  # requests per turn of each tool
ROUNDS = 3  # see _agree_in_some_round
# curl's first TLS transfers in a process carry OpenSSL's lazy setup: 4.0, 2.5, 2.3, then ~1.4 ms of
# TLS phase on the veth here. The first three transfers of each curl process are discarded.
CURL_WARM_UP = 3
TOLERANCE_SECONDS = 0.5e-3  # issue 4: medians within 0.5 ms of curl's
ONE_WAY_DELAY_SECONDS = 0.005
HTTP_PORT, HTTPS_PORT = 9311, 9443
PHASES = ("dns_seconds", "connect_seconds", "tls_seconds", "ttfb_seconds", "total_seconds")
CURL_MARKS = ("namelookup", "connect", "appconnect", "pretransfer", "starttransfer", "total", "num_connects")
CURL_FORMAT = " ".join(f"%{{time_{mark}}}" if mark != "num_connects" else "%{num_connects}" for mark in CURL_MARKS) + "\\n"

_fresh = itertools.count()


@dataclass
class ClientPath:
    """One client namespace, its link to the server, and the probe worker running in it."""

    client: Netns
    link: Link
    one_way_delay: float
    worker: ProbeWorker

    def domain(self, family: int) -> str:
        """The domain whose names resolve to the server's end of this link, over IPv4 or IPv6."""
        return f"{self.client.name.rsplit('-', 1)[1]}{family}.{LOCAL_ZONE}"

    def fresh_name(self, family: int) -> str:
        return f"r{next(_fresh)}.{self.domain(family)}"

    def address(self, family: int) -> str:
        return self.link.b_addr if family == 4 else self.link.b_addr6

    def literal(self, family: int) -> str:
        return self.link.b_addr if family == 4 else f"[{self.link.b_addr6}]"


@dataclass
class Network:
    paths: dict[str, ClientPath]
    certificate: Path


def _certificate(openssl: str, directory: Path, domains: list[str], addresses: list[str]) -> tuple[Path, Path]:
    """A self-signed EC certificate for every name under `domains` and for the server's addresses."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    alt_names = ",".join([*(f"DNS:*.{d}" for d in domains), *(f"IP:{a}" for a in addresses)])
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN=server.{LOCAL_ZONE}",
         "-addext", f"subjectAltName={alt_names}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _remove_stale_resolver_configs() -> None:
    """/etc/netns entries of ours left by a run that was killed, whose namespace no longer exists."""
    for directory in Path("/etc/netns").glob("qnb*"):
        if not (Path("/run/netns") / directory.name).exists():
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    require_root()
    for tool in ("curl", "openssl", "dnsmasq", "ss"):
        require_tool(tool)
    with Lab("qnb", workdir=tmp_path_factory.mktemp("lab")) as lab:
        server = lab.namespace("s")
        veth_client, delay_client = lab.namespace("veth"), lab.namespace("delay")
        delayed = lab.delayed_link(delay_client, server, RelaySettings(delay=ONE_WAY_DELAY_SECONDS))
        links = {"veth": (veth_client, lab.link(veth_client, server), 0.0),
                 "delay": (delay_client, delayed, ONE_WAY_DELAY_SECONDS)}  # fmt: skip
        addresses = [address for _, link, _ in links.values() for address in (link.b_addr, link.b_addr6)]
        domains = {}
        for role, (_, link, _) in links.items():
            domains[f"{role}4.{LOCAL_ZONE}"] = [link.b_addr]
            domains[f"{role}6.{LOCAL_ZONE}"] = [link.b_addr6]
        cert, key = _certificate(require_tool("openssl"), lab.workdir, list(domains), addresses)
        start_resolver(server, lab.workdir, [link.b_addr for _, link, _ in links.values()], domains)
        listen = [arg for address in addresses for arg in ("--listen", address)]
        server.popen(*RAISED_PRIORITY, PYTHON, "-m", "qiancheng.probes.responder.main", *listen, "--http-port", str(HTTP_PORT),
                     "--echo-port", "0", "--dns-port", "0", cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server.popen(*RAISED_PRIORITY, PYTHON, "-m", "tests.netlab.servers.https_server", "--cert", str(cert), "--key", str(key),
                     "--port", str(HTTPS_PORT), *addresses, cwd=ROOT)
        server.wait_listening(HTTP_PORT)
        server.wait_listening(HTTPS_PORT)
        # `ip netns exec` mounts /etc/netns/NS/* over /etc/*: each client resolves through its own link.
        _remove_stale_resolver_configs()
        resolv_dirs: list[Path] = []
        paths = {}
        try:
            for role, (client, link, delay) in links.items():
                directory = Path("/etc/netns") / client.name
                directory.mkdir(parents=True)
                resolv_dirs.append(directory)
                (directory / "resolv.conf").write_text(f"nameserver {link.b_addr}\noptions timeout:2 attempts:1\n")
                paths[role] = ClientPath(client, link, delay, ProbeWorker(client, env={"SSL_CERT_FILE": str(cert)}))
            yield Network(paths, cert)
            for path in paths.values():
                path.worker.close()
        finally:
            for directory in resolv_dirs:
                shutil.rmtree(directory, ignore_errors=True)


def _curl(path: ClientPath, urls: list[str], certificate: Path) -> list[dict[str, float]]:
    """curl's marks (seconds since each transfer's start) for GETs of `urls`, in one curl process.

    The first CURL_WARM_UP transfers are a warm-up and are not returned. `Connection: close` as our probe sends
    it, and no TLS session reuse, so every transfer makes its own connection and full handshake.
    """
    per_url = ["-o", "/dev/null", "-w", CURL_FORMAT, "-H", "Connection: close"]
    command = ["curl", "-s", "--noproxy", "*", "--no-sessionid", "--cacert", str(certificate)]
    done = path.client.run(*RAISED_PRIORITY, *command, *(arg for url in urls for arg in (*per_url, url)), timeout=30)
    transfers = [dict(zip(CURL_MARKS, map(float, line.split()), strict=True)) for line in done.stdout.splitlines()]
    assert len(transfers) == len(urls), done.stdout
    assert all(marks["num_connects"] == 1 for marks in transfers), "curl reused a connection"
    return transfers[CURL_WARM_UP:]


def _curl_phases(marks: dict[str, float], tls: bool) -> dict[str, float]:
    """curl's cumulative marks as our phases (as our probe defines them from the same marks)."""
    return {
        "dns_seconds": marks["namelookup"],
        "connect_seconds": marks["connect"] - marks["namelookup"],
        "tls_seconds": marks["appconnect"] - marks["connect"] if tls else 0.0,
        "ttfb_seconds": marks["starttransfer"] - marks["pretransfer"],
        "total_seconds": marks["total"],
    }


def _medians(series: list[dict[str, float]]) -> dict[str, float]:
    return {name: statistics.median(row[name] for row in series) for name in series[0]}


def _disagreements(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Phases whose medians differ by more than the tolerance, with (ours, curl's) in ms."""
    return {name: (round(ours[name] * 1e3, 3), round(theirs[name] * 1e3, 3))
            for name in theirs if abs(ours[name] - theirs[name]) > TOLERANCE_SECONDS}  # fmt: skip


def _measure(path: ClientPath, kind: str, target: str, **settings: Any) -> dict[str, Any]:
    result = path.worker.measure(kind, target, **settings)
    assert result["success"], result
    return result


Series = tuple[list[dict[str, float]], list[dict[str, float]]]


def _agree_in_some_round(what: str, one_round: Callable[[], Series]) -> dict[str, float]:
    """Our medians from the first of up to ROUNDS rounds whose medians all agree with curl's.

    A burst of load from other work on this shared two-core machine can slow one tool's block by
    more than the tolerance; such noise passes, a real disagreement does not: every round is printed,
    and the test fails only if no round agrees.
    """
    reports = []
    for _ in range(ROUNDS):
        ours, theirs = one_round()
        ours_median, curl_median = _medians(ours), _medians(theirs)
        shown = ", ".join(f"{n.removesuffix('_seconds')} {ours_median[n] * 1e3:.3f}/{curl_median[n] * 1e3:.3f}" for n in curl_median)
        reports.append(f"{what} medians over {RUNS} (ms, ours/curl): {shown}")
        print(reports[-1])
        if not _disagreements(ours_median, curl_median):
            return ours_median
    pytest.fail(f"no round agreed with curl within {TOLERANCE_SECONDS * 1e3:g} ms:\n" + "\n".join(reports))


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("role", ["veth", "delay"])
def test_tcp_connect_agrees_with_curl(network: Network, role: str, family: int) -> None:
    path = network.paths[role]
    target = f"{path.literal(family)}:{HTTP_PORT}"
    url = f"http://{target}/ping"
    _measure(path, "tcp", target, count=1)  # warm-up, as curl's first transfer of each block

    def one_round() -> Series:
        ours: list[dict[str, float]] = []
        theirs: list[dict[str, float]] = []
        for _ in range(RUNS // BLOCK):
            for _ in range(BLOCK):
                ours.append({"connect_seconds": _measure(path, "tcp", target, count=1, timeout="1s")["samples"][0]})
            curl = _curl(path, [url] * (CURL_WARM_UP + BLOCK), network.certificate)
            theirs.extend({"connect_seconds": marks["connect"] - marks["namelookup"]} for marks in curl)
        return ours, theirs

    ours_median = _agree_in_some_round(f"tcp connect {role} IPv{family}", one_round)
    assert ours_median["connect_seconds"] >= 2 * path.one_way_delay  # a handshake is a full round trip


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("role", ["veth", "delay"])
def test_http_phases_agree_with_curl(network: Network, role: str, scheme: str, family: int) -> None:
    path = network.paths[role]
    tls = scheme == "https"

    def url() -> str:
        return f"{scheme}://{path.fresh_name(family)}:{HTTPS_PORT if tls else HTTP_PORT}/ping"

    _measure(path, "http", url())  # warm-up, as curl's first transfer of each block

    def one_round() -> Series:
        ours: list[dict[str, float]] = []
        theirs: list[dict[str, float]] = []
        for _ in range(RUNS // BLOCK):
            for _ in range(BLOCK):
                result = _measure(path, "http", url(), timeout="2s")
                assert result["info"]["address"] == path.address(family)
                ours.append({name: result["figures"][name] for name in PHASES})
            curl = _curl(path, [url() for _ in range(CURL_WARM_UP + BLOCK)], network.certificate)
            theirs.extend(_curl_phases(marks, tls) for marks in curl)
        return ours, theirs

    ours_median = _agree_in_some_round(f"{scheme} {role} IPv{family}", one_round)
    round_trip = 2 * path.one_way_delay
    for phase in ("dns_seconds", "connect_seconds", "ttfb_seconds"):  # each at least one round trip
        assert ours_median[phase] >= round_trip, phase
