"""Responsiveness under load on a tbf bottleneck with a large queue and with a small one.

A client namespace downloads from a server namespace over a veth whose server end is shaped by tbf
to RATE_BIT, first with a queue of SMALL_QUEUE_SECONDS (limit = rate × delay), then of
LARGE_QUEUE_SECONDS. In each case a driver in the client namespace (this module run as a program)
takes idle probes against the responder (http) and an HTTPS server beside it, starts an iperf3
download (reverse mode, STREAMS streams) from the same server, waits WARM_UP_SECONDS for slow start
to end and the queue to fill, then runs LatencyProbes (one set per scheme) and fping side by side for
WINDOW_SECONDS. Every probe round trip and every echo reply crosses the shaped queue once.

The load's sender uses CUBIC, loss-based like most servers, which fills a tail-drop queue: iperf3 sets
it per socket (`-C cubic`), since this machine defaults to BBR, which keeps its own queue near one
bandwidth-delay product (23 ms on the 250 ms queue here), and a namespace cannot change that default.

Checks: on the large queue loaded RTT rises and responsiveness_rpm falls by at least RPM_FACTOR
against the small one; the loaded RTT agrees with fping's median during the same load, and with the
queue's theoretical delay (limit / rate) plus the idle round trip.

Then the same through the product: `qiancheng-probe once --kind download` against the responder on
both queues (its streams are the load, its LatencyProbes the probes), with `fping -D` running beside
it; the echoes sent during the kind's measured window are the peer. The server's route to the client
carries `congctl cubic`, so the responder's connections use CUBIC too.

Over TLS 1.3 the test server answers the first request one round trip late when the queue is long
(http_f ≈ 2 RTT, ≈ 430 ms on the 250 ms queue; curl's time_starttransfer − time_pretransfer shows the
same), which the draft counts as the server's share of responsiveness (§6.1.3); the pooled median and
the https RPM carry it.

    ip netns exec NS python -m tests.netlab.test_responsiveness HTTP_URL HTTPS_URL SERVER_ADDRESS
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qiancheng.probes.measure.loaded_latency import LatencyProbes
from tests.conftest import PYTHON, ROOT
from tests.integration.helpers import require_root, require_tool
from tests.netlab.conftest import probe_once
from tests.netlab.lab import Lab, Link, Netns, shape_rate

PREFIX = "qr"
HTTP_PORT, HTTPS_PORT = 9380, 9443
SCHEMES = ("http", "https")
RATE_BIT = 20_000_000
SMALL_QUEUE_SECONDS = 0.020
LARGE_QUEUE_SECONDS = 0.250
STREAMS = 4
IDLE_ROUNDS = 10
WARM_UP_SECONDS = 2.0
WINDOW_SECONDS = 4.0
PROBE_INTERVAL_SECONDS = 0.1
FPING_INTERVAL_MS = 100
# The large queue holds 12.5 times the small one's delay (measured: 11x in RPM when the small queue
# dropped no probe). The small tail-drop queue under four CUBIC flows drops 0-12 % of all packets
# (fping lost up to 5 echoes of 40), and a probe whose SYN is dropped waits a 1 s retransmission that
# the draft's trimmed mean keeps once more than 5 % of probes are hit: measured ratios 4.5-11. A factor
# of 3 still tells a 250 ms queue from a 20 ms one. A 10 ms small queue dropped so often that one TLS
# handshake in four waited ~220 ms for a retransmission, and its https RPM swung between 1000 and 3000.
RPM_FACTOR = 3.0
# fping's echoes cross the same tail-drop queue as the load and are dropped with it (up to 12.5 % on
# the small queue): the median needs enough of them, not all.
FPING_SHARE = 0.6
# Kind download's own streams fill the large queue more slowly (their receive windows grow with it):
# in its window the queue stood at 60-150 ms of the 250 ms (fping agreeing), against 16-17 ms on the
# small one, and its RPM fell 3.3-9 times.
DOWNLOAD_RPM_FACTOR = 2.0


@dataclass(frozen=True)
class LoadedRun:
    """One case's outcome: our figures by scheme, fping's RTTs during the same window, the queue's delay."""

    queue_seconds: float
    figures: dict[str, dict[str, float]]
    fping_seconds: list[float]
    lost_echoes: int

    @property
    def fping_median(self) -> float:
        return statistics.median(self.fping_seconds)


def _run_case(urls: dict[str, str], server_address: str) -> dict[str, Any]:
    """The driver's work, inside the client namespace: idle probes, then load, probes and fping together."""

    async def main() -> dict[str, Any]:
        # the HTTPS server's certificate is made for this run: what is timed here is the handshake, not trust
        probes = {scheme: LatencyProbes(url, verify_tls=False, interval=PROBE_INTERVAL_SECONDS, timeout=2.0)
                  for scheme, url in urls.items()}  # fmt: skip
        for each in probes.values():
            await each.measure_idle(IDLE_ROUNDS)
        load = await asyncio.create_subprocess_exec(
            "iperf3", "-c", server_address, "-R", "-C", "cubic", "-P", str(STREAMS), "-J",
            "-t", str(WARM_UP_SECONDS + WINDOW_SECONDS + 2), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await asyncio.sleep(WARM_UP_SECONDS)
            count = int(WINDOW_SECONDS * 1000 / FPING_INTERVAL_MS)
            fping = await asyncio.create_subprocess_exec(
                "fping", "-C", str(count), "-p", str(FPING_INTERVAL_MS), "-t", "2000", "-q", server_address,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(WINDOW_SECONDS, stop.set)
            await asyncio.gather(*(each.run_loaded(stop) for each in probes.values()))
            load_running = load.returncode is None  # through the whole window
            _, fping_err = await fping.communicate()
            report = json.loads((await load.communicate())[0])
        finally:
            if load.returncode is None:
                load.terminate()
                await load.wait()
        line = next(l for l in fping_err.decode().splitlines() if " : " in l)
        echoes = [None if v == "-" else float(v) / 1e3 for v in line.split(" : ", 1)[1].split()]
        end = report.get("end", {})
        return {"figures": {scheme: each.figures() for scheme, each in probes.items()}, "fping": echoes,
                "load_running": load_running, "load_error": report.get("error"),
                "congestion": end.get("sender_tcp_congestion"),
                "load_bits_per_second": end.get("sum_received", {}).get("bits_per_second", 0.0)}  # fmt: skip

    return asyncio.run(main())


def _case(client: Netns, urls: dict[str, str], address: str) -> dict[str, Any]:
    done = client.run(PYTHON, "-m", "tests.netlab.test_responsiveness", urls["http"], urls["https"], address,
                          timeout=WARM_UP_SECONDS + WINDOW_SECONDS + 30)  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


@dataclass(frozen=True)
class Network:
    """The client and server namespaces, their link, and the URLs of the server's probe targets."""

    client: Netns
    server: Netns
    link: Link
    urls: dict[str, str]

    def shape(self, queue_seconds: float) -> None:
        """The download direction's bottleneck: the server's end of the link, with this queue."""
        shape_rate(self.server, self.link.b_dev, RATE_BIT, limit_bytes=int(RATE_BIT / 8 * queue_seconds))


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    require_root()
    for tool in ("ip", "tc", "iperf3", "fping", "openssl"):
        require_tool(tool)
    with Lab(PREFIX, workdir=tmp_path_factory.mktemp("lab")) as lab:
        client, server = lab.namespace("c"), lab.namespace("s")
        link = lab.link(client, server)
        # Every connection the server opens towards the client uses CUBIC (the route's congctl), as the
        # responder sets none itself and a namespace cannot change this machine's default (BBR).
        server.run("ip", "route", "replace", link.network, "dev", link.b_dev, "congctl", "cubic")
        server.popen(require_tool("iperf3"), "-s", "-B", link.b_addr,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        server.popen(PYTHON, "-m", "qiancheng.probes.responder.main", "--listen", link.b_addr, "--http-port",
                     str(HTTP_PORT), "--echo-port", "0", "--dns-port", "0",
                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        cert, key = lab.workdir / "cert.pem", lab.workdir / "key.pem"
        subprocess.run(
            [require_tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=server",
             "-addext", f"subjectAltName=IP:{link.b_addr}"],
            check=True, capture_output=True,
        )  # fmt: skip
        server.popen(PYTHON, "-m", "tests.netlab.servers.https_server", "--cert", str(cert), "--key", str(key),
                     "--port", str(HTTPS_PORT), link.b_addr, cwd=ROOT)  # fmt: skip
        for port in (HTTP_PORT, HTTPS_PORT, 5201):
            server.wait_listening(port)
        # https_server serves /ping only: a load URL of /download makes the probes ask for /ping there too
        urls = {"http": f"http://{link.b_addr}:{HTTP_PORT}/download?bytes=1",
                "https": f"https://{link.b_addr}:{HTTPS_PORT}/download?bytes=1"}  # fmt: skip
        yield Network(client, server, link, urls)


@pytest.fixture(scope="module")
def runs(network: Network) -> dict[str, LoadedRun]:
    """Both queues under the iperf3 load, with our probes (http and https) and fping side by side."""
    outcomes = {}
    for name, queue_seconds in (("small", SMALL_QUEUE_SECONDS), ("large", LARGE_QUEUE_SECONDS)):
        network.shape(queue_seconds)
        result = _case(network.client, network.urls, network.link.b_addr)
        assert result["load_running"], f"the load ended before the window did: {result['load_error']}"
        assert result["congestion"] == "cubic" and result["load_bits_per_second"] > 0.8 * RATE_BIT, result
        echoes = result["fping"]
        outcomes[name] = LoadedRun(queue_seconds, result["figures"], [e for e in echoes if e is not None],
                                   sum(1 for e in echoes if e is None))  # fmt: skip
    return outcomes


def _shown(run: LoadedRun, scheme: str) -> str:
    f = run.figures[scheme]
    return (f"{scheme}, queue {run.queue_seconds * 1e3:.0f} ms: idle {f.get('idle_rtt_seconds', 0) * 1e3:.2f} ms, "
            f"loaded {f.get('loaded_rtt_seconds', 0) * 1e3:.1f} ms, fping {run.fping_median * 1e3:.1f} ms, "
            f"rpm {f.get('responsiveness_rpm', 0):.0f} (idle {f.get('idle_rpm', 0):.0f}), "
            f"probes {f.get('loaded_probes', 0):.0f} ({f.get('loaded_probes_failed', 0):.0f} failed)")  # fmt: skip


@pytest.mark.parametrize("scheme", SCHEMES)
def test_large_queue_raises_loaded_rtt_and_lowers_responsiveness(runs: dict[str, LoadedRun], scheme: str) -> None:
    small, large = runs["small"], runs["large"]
    print("", _shown(small, scheme), _shown(large, scheme), sep="\n")
    for run in (small, large):
        figures = run.figures[scheme]
        assert figures["loaded_probes"] >= 0.5 * WINDOW_SECONDS / PROBE_INTERVAL_SECONDS, _shown(run, scheme)
        assert figures["loaded_rtt_seconds"] > figures["idle_rtt_seconds"], _shown(run, scheme)
    assert large.figures[scheme]["bufferbloat_seconds"] > 0.5 * LARGE_QUEUE_SECONDS, _shown(large, scheme)
    assert large.figures[scheme]["responsiveness_rpm"] * RPM_FACTOR <= small.figures[scheme]["responsiveness_rpm"], (
        _shown(small, scheme), _shown(large, scheme))  # fmt: skip


@pytest.mark.parametrize("scheme", SCHEMES)
def test_loaded_rtt_agrees_with_fping_during_the_same_load(runs: dict[str, LoadedRun], scheme: str) -> None:
    for run in runs.values():
        assert len(run.fping_seconds) >= FPING_SHARE * WINDOW_SECONDS * 1000 / FPING_INTERVAL_MS, _shown(run, scheme)
        ours, peer = run.figures[scheme]["loaded_rtt_seconds"], run.fping_median
        # Both cross the same queue once per round trip; its level moves with TCP's sawtooth, so the
        # medians of two samplings of it agree within a fifth, plus 2 ms for our probes' own processing.
        assert abs(ours - peer) <= 0.2 * peer + 0.002, _shown(run, scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_loaded_rtt_matches_the_queue_delay(runs: dict[str, LoadedRun], scheme: str) -> None:
    large = runs["large"]
    theory = large.queue_seconds  # limit / rate: the wait of a packet at the tail of a full tbf queue
    loaded, idle = large.figures[scheme]["loaded_rtt_seconds"], large.figures[scheme]["idle_rtt_seconds"]
    # TCP keeps a standing queue between its sawtooth's low point and the limit; a tail-drop queue
    # never holds a packet longer than limit / rate (plus one burst of tokens).
    assert 0.5 * theory <= loaded - idle <= 1.1 * theory, _shown(large, scheme)


@dataclass(frozen=True)
class DownloadRun:
    """`--kind download`'s figures on one queue, and fping's RTTs of echoes sent during its window."""

    figures: dict[str, float]
    fping_seconds: list[float]

    def shown(self, name: str) -> str:
        f = self.figures
        return (f"download kind, {name} queue: {f['throughput_bits_per_second'] / 1e6:.1f} Mbit/s, "
                f"idle {f.get('idle_rtt_seconds', 0) * 1e3:.2f} ms, loaded {f.get('loaded_rtt_seconds', 0) * 1e3:.1f} ms, "
                f"fping {statistics.median(self.fping_seconds or [0]) * 1e3:.1f} ms, "
                f"rpm {f.get('responsiveness_rpm', 0):.0f}, probes {f.get('loaded_probes', 0):.0f}, "
                f"echoes {len(self.fping_seconds)}")  # fmt: skip


def _fping_during(output: str, begin: float, end: float) -> list[float]:
    """RTTs of `fping -D` replies (lines `[unix time] addr : [i], .. bytes, 1.23 ms (...)`) sent within [begin, end]."""
    rtts = []
    for line in output.splitlines():
        if not line.startswith("[") or " bytes, " not in line:
            continue
        received = float(line[1:line.index("]")])
        rtt = float(line.split(" bytes, ", 1)[1].split(" ms", 1)[0]) / 1e3
        if begin <= received - rtt <= end:
            rtts.append(rtt)
    return rtts


@pytest.fixture(scope="module")
def download_runs(network: Network) -> dict[str, DownloadRun]:
    """`qiancheng-probe once --kind download` from the responder on both queues, with fping beside it."""
    runs = {}
    for name, queue_seconds in (("small", SMALL_QUEUE_SECONDS), ("large", LARGE_QUEUE_SECONDS)):
        network.shape(queue_seconds)
        fping = network.client.popen("fping", "-D", "-p", str(FPING_INTERVAL_MS), "-t", "2000", "-c", "200",
                                     network.link.b_addr,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            result = probe_once(network.client, "download", f"{network.link.b_addr}:{HTTP_PORT}", "--streams",
                                str(STREAMS), "--warmup", f"{WARM_UP_SECONDS:g}s", "--duration", f"{WINDOW_SECONDS:g}s",
                                timeout=60)  # fmt: skip
        finally:
            fping.terminate()
            output = fping.communicate()[0].decode()
        assert result["success"], result
        figures = result["figures"]
        # the window is the test's last `window_seconds` (stopping the streams after it takes milliseconds)
        end = result["start_ns"] / 1e9 + result["duration_seconds"]
        runs[name] = DownloadRun(figures, _fping_during(output, end - figures["window_seconds"], end))
    return runs


def test_download_kind_reports_the_loaded_latency_of_its_own_load(download_runs: dict[str, DownloadRun]) -> None:
    small, large = download_runs["small"], download_runs["large"]
    print("", small.shown("small"), large.shown("large"), sep="\n")
    for run, name in ((small, "small"), (large, "large")):
        figures = run.figures
        assert figures["throughput_bits_per_second"] > 0.8 * RATE_BIT, run.shown(name)
        assert figures["loaded_probes"] >= 0.5 * WINDOW_SECONDS / PROBE_INTERVAL_SECONDS, run.shown(name)
        assert len(run.fping_seconds) >= 0.8 * WINDOW_SECONDS * 1000 / FPING_INTERVAL_MS, run.shown(name)
        peer = statistics.median(run.fping_seconds)
        assert abs(figures["loaded_rtt_seconds"] - peer) <= 0.2 * peer + 0.002, run.shown(name)
    assert large.figures["responsiveness_rpm"] * DOWNLOAD_RPM_FACTOR <= small.figures["responsiveness_rpm"], (
        small.shown("small"), large.shown("large"))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description="one loaded-latency case, run inside the client namespace")
    parser.add_argument("http_url")
    parser.add_argument("https_url")
    parser.add_argument("server_address")
    args = parser.parse_args()
    json.dump(_run_case({"http": args.http_url, "https": args.https_url}, args.server_address), sys.stdout)
    print()


if __name__ == "__main__":
    main()
