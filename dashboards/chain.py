"""A throwaway chain on loopback for the dashboard preview: a responder, a collector that judges SLAs,
probes in two cities, and a Prometheus scraping the collector every second. Stopped on exit."""

from __future__ import annotations

import hashlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Final

__all__ = ["Chain", "CITIES"]

ROOT: Final = Path(__file__).resolve().parent.parent
CITIES: Final = {"p-lishui-ct-01": "lishui", "p-qiandongnan-cm-01": "qiandongnan"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s")


class Chain:
    """Start with `start()`, read `prometheus_url`, and `stop()` (also on failure)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[subprocess.Popen[bytes]] = []
        self.prometheus_url = ""

    def _start(self, name: str, *command: str) -> None:
        with (self.workdir / f"{name}.log").open("ab") as log:
            self.running.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))

    def start(self) -> None:
        prometheus = shutil.which("prometheus")
        if prometheus is None:
            raise RuntimeError("prometheus is not installed (Debian: apt-get install prometheus)")
        http, echo, dns, collector, prom = (_free_port() for _ in range(5))
        self._start("responder", sys.executable, "-m", "qiancheng.probes.responder.main", "--listen", "127.0.0.1",
                    "--http-port", str(http), "--echo-port", str(echo), "--dns-port", str(dns))  # fmt: skip
        tokens = {probe: secrets.token_urlsafe(24) for probe in CITIES}
        entries = "".join(f"  - {{id: {p}, token_sha256: {hashlib.sha256(t.encode()).hexdigest()}}}\n" for p, t in tokens.items())
        config = self.workdir / "collector.yaml"
        config.write_text(
            f"listen: {{host: 127.0.0.1, port: {collector}}}\n"
            f"store: {{backend: sqlite, path: \"{self.workdir / 'collector.db'}\"}}\n"
            f"probes:\n{entries}"
            f"sla: {{profiles: \"{ROOT / 'configs' / 'sla.yaml'}\", windows: [30s, 5m], interval: 2s}}\n"
        )
        self._start("collector", sys.executable, "-m", "qiancheng.collector.main", "--config", str(config))
        _wait(f"http://127.0.0.1:{collector}/healthz")
        targets = (
            f"  - {{name: edge-echo, address: '127.0.0.1:{echo}', class: edge, kinds: [tcp]}}\n"
            f"  - {{name: loopback, address: 127.0.0.1, class: edge, kinds: [icmp]}}\n"
            f"  - {{name: pool-echo, address: '127.0.0.1:{echo}', class: cloud_pool, kinds: [tcp]}}\n"
            f"  - {{name: cdn-web, address: 'http://127.0.0.1:{http}/ping', class: cdn, kinds: [http]}}\n"
            f"  - {{name: cdn-echo, address: '127.0.0.1:{echo}', class: cdn, kinds: [tcp]}}\n"
            f"  - {{name: hub-echo, address: '127.0.0.1:{echo}', class: national_hub, kinds: [tcp]}}\n"
            f"  - {{name: resolver, address: '127.0.0.1:{dns}', class: dns, kinds: {{dns: {{query_name: www.qiancheng.test}}}}}}\n"
        )
        for probe, city in CITIES.items():
            path = self.workdir / f"{probe}.yaml"
            path.write_text(
                f"probe: {{id: {probe}, city: {city}, isp: ct}}\n"
                f"collector: {{url: \"http://127.0.0.1:{collector}\", token: \"{tokens[probe]}\", batch_max_age: 1s}}\n"
                f"spool: {{path: \"{self.workdir / (probe + '-spool.db')}\"}}\n"
                "defaults:\n  icmp: {interval: 2s, count: 10, packet_interval: 20ms, timeout: 500ms}\n"
                "  tcp: {interval: 2s, count: 5, packet_interval: 50ms, timeout: 500ms}\n"
                "  dns: {interval: 2s, timeout: 1s}\n  http: {interval: 2s, timeout: 1500ms}\n"
                f"targets:\n{targets}"
            )
            self._start(probe, sys.executable, "-m", "qiancheng.probes.cli", "run", "--config", str(path))
        scrape = self.workdir / "prometheus.yml"
        scrape.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n"
                          f"  - job_name: qiancheng\n    static_configs:\n      - targets: ['127.0.0.1:{collector}']\n")  # fmt: skip
        self._start("prometheus", prometheus, f"--config.file={scrape}", f"--storage.tsdb.path={self.workdir / 'prom'}",
                    f"--web.listen-address=127.0.0.1:{prom}", "--log.level=warn")  # fmt: skip
        self.prometheus_url = f"http://127.0.0.1:{prom}"
        _wait(self.prometheus_url + "/-/ready")
        time.sleep(2)  # a bad config makes a process exit at once: say so now rather than draw empty panels
        for process in self.running:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited: see the logs in {self.workdir}")

    def stop(self) -> None:
        for process in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
