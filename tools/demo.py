"""`make demo`: a collector (SQLite), a responder and a probe on loopback, a live table, a summary.

Everything runs as real processes with the same commands an operator uses; the demo only writes their
configs, starts them, polls the collector's read API for the table, and stops them in order (probe
first, so it can flush its spool) on Ctrl-C, SIGTERM or after DEMO_SECONDS.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from qiancheng.core.result import Result
from qiancheng.probes.render import results_table
from qiancheng.probes.spool import Spool

__all__ = ["main"]

HOST = "127.0.0.1"
COLLECTOR_PORT, HTTP_PORT, ECHO_PORT, DNS_PORT = 9310, 9311, 9312, 9353
COLLECTOR = f"http://{HOST}:{COLLECTOR_PORT}"


def _ipv6_loopback() -> bool:
    """True if ::1 is usable here (some containers have no IPv6 at all)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


# The national hub is measured over IPv6 where the machine has it, as dual-stack hubs are.
HUB = "::1" if _ipv6_loopback() else HOST
PROBE_ID = "demo-lishui-01"


def _probe_config(workdir: Path, token: str) -> str:
    return f"""\
probe: {{id: {PROBE_ID}, city: lishui, isp: demo-isp, labels: {{site: loopback}}}}
collector: {{url: "{COLLECTOR}", token: "{token}", batch_max_age: 1s, backoff_base: 200ms, backoff_cap: 5s}}
spool: {{path: "{workdir / 'spool.db'}", max_bytes: 64MiB}}
scheduler: {{max_concurrency: 8, shutdown_flush: 3s}}
defaults:
  icmp: {{interval: 5s, count: 10, packet_interval: 50ms, timeout: 1s}}
  tcp: {{interval: 5s, count: 5, packet_interval: 100ms, timeout: 1s}}
  dns: {{interval: 5s, timeout: 1s}}
  http: {{interval: 5s, timeout: 4s}}
targets:
  - name: edge-node
    address: {HOST}
    class: edge
    kinds:
      icmp: {{}}
      tcp: {{port: {ECHO_PORT}}}
      http: {{url: "http://{HOST}:{HTTP_PORT}/ping"}}
  - name: cloud-pool
    address: {HOST}:{HTTP_PORT}
    class: cloud_pool
    kinds:
      tcp: {{}}
      http: {{url: "http://{HOST}:{HTTP_PORT}/download?bytes=4000000"}}
  - name: cdn-object
    address: "http://{HOST}:{HTTP_PORT}/download?bytes=1000000"
    class: cdn
    kinds: [http]
  - name: national-hub
    address: "{HUB}"
    class: national_hub
    kinds:
      icmp: {{}}
      tcp: {{port: {ECHO_PORT}}}
  - name: dns-resolver
    address: {HOST}:{DNS_PORT}
    class: dns
    kinds:
      dns: {{query_name: www.qiancheng.test, query_type: A}}
"""


def _collector_config(workdir: Path, token: str) -> str:
    digest = hashlib.sha256(token.encode()).hexdigest()
    return f"""\
listen: {{host: {HOST}, port: {COLLECTOR_PORT}}}
store: {{backend: sqlite, path: "{workdir / 'collector.db'}"}}
probes:
  - {{id: {PROBE_ID}, token_sha256: {digest}}}
"""


def _port_busy(port: int, kind: int = socket.SOCK_STREAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:  # as the servers do, so a previous run's TIME_WAIT does not count
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
            return False
        except OSError:
            return True


def _get_json(path: str) -> Any:
    with urllib.request.urlopen(COLLECTOR + path, timeout=2) as response:
        return json.load(response)


def _wait_http(url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class Demo:
    def __init__(self, workdir: Path, console: Console) -> None:
        self.workdir = workdir
        self.console = console
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def start(self, name: str, *args: str) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def stop(self, name: str, timeout: float = 10.0) -> None:
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def died(self) -> str | None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                return name
        return None


def _view(latest: dict[str, Any], started: float) -> Group:
    decoder = msgspec.json.Decoder(Result)
    results = [decoder.decode(json.dumps(item["result"])) for item in latest.get("results", [])]
    results.sort(key=lambda r: (r.target.name, r.kind))
    totals = latest.get("totals", {})
    header = Text(
        f"{time.monotonic() - started:5.0f} s   results stored {totals.get('results', 0)}   "
        f"batches {totals.get('batches', 0)}   (Ctrl-C to stop)",
        style="bold",
    )
    return Group(header, results_table(results, title="latest result per target and kind"))


def main() -> int:
    console = Console()
    seconds = float(os.environ.get("DEMO_SECONDS", "0") or 0)
    workdir = Path(os.environ.get("DEMO_DIR", "demo-data")).resolve()
    busy = [p for p in (COLLECTOR_PORT, HTTP_PORT, ECHO_PORT, DNS_PORT) if _port_busy(p)]
    if _port_busy(DNS_PORT, socket.SOCK_DGRAM):
        busy.append(DNS_PORT)
    if busy:
        console.print(f"[red]demo: ports {sorted(set(busy))} on {HOST} are in use; stop what holds them first[/red]")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    token = secrets.token_urlsafe(32)
    (workdir / "collector.yaml").write_text(_collector_config(workdir, token))
    (workdir / "probe.yaml").write_text(_probe_config(workdir, token))

    demo = Demo(workdir, console)
    stop_requested = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    started = time.monotonic()
    try:
        listen = ["--listen", HOST] + (["--listen", HUB] if HUB != HOST else [])
        demo.start("responder", "qiancheng.probes.responder.main", *listen)
        demo.start("collector", "qiancheng.collector.main", "--config", str(workdir / "collector.yaml"))
        if not _wait_http(f"{COLLECTOR}/healthz", 20):
            console.print(f"[red]demo: the collector did not come up; see {workdir / 'collector.log'}[/red]")
            return 1
        demo.start("probe", "qiancheng.probes.cli", "run", "--config", str(workdir / "probe.yaml"))
        console.print(f"[bold]qiancheng demo[/bold]: collector, responder and probe on {HOST}; files in {workdir}")
        console.print(f"  metrics   {COLLECTOR}/metrics")
        console.print(f"  health    {COLLECTOR}/healthz")
        console.print(f"  OpenAPI   {COLLECTOR}/api/v1/openapi.json")
        console.print(f"  latest    {COLLECTOR}/api/v1/latest")
        console.print(f"  responder http://{HOST}:{HTTP_PORT}/ping, TCP echo {HOST}:{ECHO_PORT}, DNS {HOST}:{DNS_PORT}")
        if os.geteuid() != 0:
            console.print("  [yellow]not root: ICMP rows will say so unless CAP_NET_RAW or ping_group_range allow it[/yellow]")
        _watch(demo, console, started, seconds, lambda: stop_requested)
    finally:
        demo.stop("probe")
        summary = _summary(workdir)
        demo.stop("collector")
        demo.stop("responder")
    console.print(summary)
    return 0


def _watch(demo: Demo, console: Console, started: float, seconds: float, stop: Any) -> None:
    """Refresh the table every second until asked to stop, time is up, or a process dies."""
    display = Live(console=console, auto_refresh=False, transient=False) if console.is_terminal else _Printer(console)
    with display as live:
        while not stop() and not (seconds and time.monotonic() - started >= seconds):
            if (dead := demo.died()) is not None:
                console.print(f"[red]demo: {dead} exited; see {demo.workdir / (dead + '.log')}[/red]")
                return
            try:
                view = _view(_get_json("/api/v1/latest"), started)
            except (OSError, ValueError) as error:
                view = Group(Text(f"waiting for the collector: {error}"))
            live.update(view, refresh=True)
            time.sleep(1)


class _Printer:
    """Stands in for rich's Live when the output is not a terminal (a log, CI): a new table every 10 s."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._last = float("-inf")

    def __enter__(self) -> _Printer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, view: Group, refresh: bool = True) -> None:
        if time.monotonic() - self._last >= 10:
            self._console.print(view)
            self._last = time.monotonic()


def _summary(workdir: Path) -> Text:
    """Tests run, results stored and acknowledged, and whether anything was lost."""
    try:
        stored = int(_get_json(f"/api/v1/latest?probe={PROBE_ID}").get("totals", {}).get("results", 0))
    except (OSError, ValueError):
        stored = -1
    counters = asyncio.run(_spool_counters(workdir / "spool.db"))
    if counters is None:
        return Text("demo: the probe never started; nothing to summarise")
    measured, acked, backlog, dropped = counters
    lost = measured - stored - backlog if stored >= 0 else None
    verdict = "none lost" if lost == 0 and dropped == 0 else f"LOST {lost}, dropped {dropped}"
    return Text(
        f"summary: tests run {measured}, results stored {stored}, results acknowledged {acked}, "
        f"still in spool {backlog}, {verdict}",
        style="bold green" if verdict == "none lost" else "bold red",
    )


async def _spool_counters(path: Path) -> tuple[int, int, int, int] | None:
    if not path.exists():
        return None
    spool = Spool(str(path), max_bytes=64 * 1024 * 1024)
    try:
        c = await spool.counters()
        return c.measured_total, c.acked_total, c.backlog, c.dropped_total
    finally:
        spool.close()


if __name__ == "__main__":
    sys.exit(main())
