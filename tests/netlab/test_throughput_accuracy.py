"""Download and upload goodput against iperf3's on the same link, in the same run, with the same streams.

A client namespace reaches a server namespace over a veth pair (or the TUN delay relay) whose both ends
are shaped by tbf; loss is nftables random drop on the receiving end's ingress. The server runs the
responder and an iperf3 server; the client runs `qiancheng-probe once --kind download|upload` and
`iperf3 -c` (`-R` for downloads, so the server sends in both tools) in turns, alternating which goes
first, and the medians of a few runs are compared: ours must reach 0.95 × iperf3's (issue 5), and both
must lie within reason of the tbf rate. Both tools discard a warm-up (ours: until slow start is over,
at most WARMUP_SECONDS; iperf3: `--omit`) and measure a window of WINDOW_SECONDS.

bench/throughput.py runs the same measurements and adds CPU seconds per GB moved.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PYTHON
from tests.integration.helpers import require_root, require_tool
from tests.netlab.lab import Lab, Link, Netns, drop_random, shape_rate
from tests.netlab.relay import RelaySettings

PREFIX = "qt"
STREAMS = 4
WARMUP_SECONDS = 1
WINDOW_SECONDS = 3
RESPONDER_PORT, IPERF_PORT = 9311, 5201
RATIO = 0.95  # issue 5: ours ≥ 0.95 × iperf3
# tbf counts whole frames; goodput is TCP payload: at most 1448 of every 1514 bytes (0.956) with
# timestamps on. Well below that the link was not filled. Above it, a window may gain at most what
# sat in the bottleneck queue or the receiver's out-of-order queue at its start (a loss repaired
# just after it starts delivers them in a leap): shape_rate's queue holds 50 ms of the rate.
PAYLOAD_SHARE = 1448 / 1514
QUEUE_SECONDS = 0.05
LINK_SHARE_LOW, LINK_SHARE_HIGH = 0.85, PAYLOAD_SHARE + QUEUE_SECONDS / WINDOW_SECONDS
MBIT = 1_000_000
# Enough for WINDOW + warm-up at 1 Gbit/s and far beyond; each stream's share stays within the
# responder's default 10 GiB per transfer.
MAX_BYTES = f"{STREAMS * 9}GiB"


@dataclass(frozen=True)
class Goodput:
    """One tool's run: mean goodput over its window, bytes moved in all, and CPU seconds of both ends and
    of the client alone (our probe, iperf3's client)."""

    bits_per_second: float
    bytes_total: float
    cpu_seconds: float
    client_cpu_seconds: float


@dataclass
class Bed:
    """A client and a server namespace on one link, the responder and an iperf3 server running."""

    lab: Lab
    client: Netns
    server: Netns
    link: Link
    responder_pid: int
    iperf_pid: int

    @property
    def server_address(self) -> str:
        return self.link.b_addr

    def ours(self, direction: str, streams: int = STREAMS, window: float = WINDOW_SECONDS) -> Goodput:
        server_cpu = _process_cpu(self.responder_pid)
        client_cpu = children_cpu()
        done = self.client.run(
            PYTHON, "-m", "qiancheng.probes.cli", "once", "--json", "--kind", direction,
            "--streams", str(streams), "--duration", f"{window}s", "--warmup", f"{WARMUP_SECONDS}s",
            "--max-bytes", MAX_BYTES, f"{self.server_address}:{RESPONDER_PORT}", check=False, timeout=60,
        )
        client = children_cpu() - client_cpu
        cpu = client + _process_cpu(self.responder_pid) - server_cpu
        assert done.returncode == 0, f"probe exit {done.returncode}: {done.stdout} {done.stderr}"
        result = json.loads(done.stdout)
        figures = result["figures"]
        return Goodput(figures["throughput_bits_per_second"], figures["bytes_total"], cpu, client)

    def iperf3(self, direction: str, streams: int = STREAMS, window: float = WINDOW_SECONDS) -> Goodput:
        server_cpu = _process_cpu(self.iperf_pid)
        client_cpu = children_cpu()
        reverse = ["-R"] if direction == "download" else []
        done = self.client.run(
            "iperf3", "-c", self.server_address, "-p", str(IPERF_PORT), "-P", str(streams), "-t", f"{window:g}",
            "-O", str(WARMUP_SECONDS), "--json", *reverse, check=False, timeout=60,
        )
        client = children_cpu() - client_cpu
        cpu = client + _process_cpu(self.iperf_pid) - server_cpu
        assert done.returncode == 0, f"iperf3 exit {done.returncode}: {done.stdout[-2000:]} {done.stderr}"
        report = json.loads(done.stdout)
        moved = sum(interval["sum"]["bytes"] for interval in report["intervals"])
        return Goodput(report["end"]["sum_received"]["bits_per_second"], moved, cpu, client)


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build_bed(lab: Lab, rate_bit: int | None = None, one_way_delay: float = 0.0) -> Bed:
    """Client and server on a veth (or, with a delay, the relay), both ends shaped to `rate_bit`."""
    require_tool("iperf3")
    client, server = lab.namespace("client"), lab.namespace("server")
    link = lab.delayed_link(client, server, RelaySettings(delay=one_way_delay)) if one_way_delay else lab.link(client, server)
    if rate_bit is not None:
        shape_rate(client, link.a_dev, rate_bit)
        shape_rate(server, link.b_dev, rate_bit)
    # Unshaped, one client moves tens of GB a minute: past the default budget per client, which is not
    # what these runs measure
    config = lab.workdir / f"responder-{link.b_dev}.yaml"
    config.write_text("limits: {max_client_bytes_per_minute: 1000GiB}\n")
    responder = server.popen(
        PYTHON, "-m", "qiancheng.probes.responder.main", "--config", str(config), "--listen", link.b_addr,
        "--http-port", str(RESPONDER_PORT), "--echo-port", "0", "--dns-port", "0", "--log-level", "warning",
    )  # fmt: skip
    iperf = server.popen("iperf3", "-s", "-B", link.b_addr, "-p", str(IPERF_PORT),
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server.wait_listening(RESPONDER_PORT)
    server.wait_listening(IPERF_PORT)
    return Bed(lab, client, server, link, responder.pid, iperf.pid)


def lossy(bed: Bed, direction: str, percent: float) -> None:
    """Random loss of `percent` % of the data packets: on the receiving end's ingress."""
    drop_random(bed.client if direction == "download" else bed.server, percent, direction="in")


def compare(bed: Bed, direction: str, runs: int) -> tuple[list[Goodput], list[Goodput]]:
    """`runs` runs of each tool in turns, alternating which goes first; (ours, iperf3's)."""
    ours: list[Goodput] = []
    theirs: list[Goodput] = []
    for run in range(runs):
        if run % 2:
            theirs.append(bed.iperf3(direction))
            ours.append(bed.ours(direction))
        else:
            ours.append(bed.ours(direction))
            theirs.append(bed.iperf3(direction))
    return ours, theirs


def median_rate(runs: list[Goodput]) -> float:
    return statistics.median(g.bits_per_second for g in runs)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    require_root()
    for tool in ("ip", "nft", "tc"):
        require_tool(tool)
    with Lab(PREFIX, workdir=tmp_path / "lab") as built:
        yield built


def _check(ours: list[Goodput], theirs: list[Goodput], rate_bit: int, low: float = LINK_SHARE_LOW) -> None:
    mine, peer = median_rate(ours), median_rate(theirs)
    shown = f"ours {[round(g.bits_per_second / MBIT, 1) for g in ours]} Mbit/s, iperf3 {[round(g.bits_per_second / MBIT, 1) for g in theirs]}"
    assert mine >= RATIO * peer, f"median ours/iperf3 = {mine / peer:.3f} < {RATIO}: {shown}"
    for name, value in (("ours", mine), ("iperf3", peer)):
        assert low * rate_bit <= value <= LINK_SHARE_HIGH * rate_bit, f"{name} median {value / MBIT:.1f} Mbit/s is not within reason of the {rate_bit / MBIT:g} Mbit/s link: {shown}"


@pytest.mark.parametrize("rate_bit", [100 * MBIT, 1000 * MBIT], ids=["100mbit", "1gbit"])
def test_goodput_matches_iperf3_on_tbf_link(lab: Lab, rate_bit: int) -> None:
    bed = build_bed(lab, rate_bit)
    for direction in ("download", "upload"):
        ours, theirs = compare(bed, direction, runs=1)
        _check(ours, theirs, rate_bit)


@pytest.mark.parametrize("percent", [1, 5])
def test_goodput_matches_iperf3_with_random_loss(lab: Lab, percent: float) -> None:
    rate_bit = 100 * MBIT
    bed = build_bed(lab, rate_bit)
    lossy(bed, "download", percent)
    ours, theirs = compare(bed, "download", runs=3)
    # random loss holds cubic below the link rate on its own: only ours against iperf3's is at stake
    _check(ours, theirs, rate_bit, low=0.2)


def test_goodput_matches_iperf3_with_delay(lab: Lab) -> None:
    rate_bit = 100 * MBIT
    bed = build_bed(lab, rate_bit, one_way_delay=0.010)
    ours, theirs = compare(bed, "download", runs=1)
    _check(ours, theirs, rate_bit)
