"""Building blocks for end-to-end tests: a collector, a responder and probes as real processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import ssl
import subprocess
import time
import urllib.request
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from qiancheng.probes.spool import Spool
from tests.conftest import PYTHON, Processes, free_port, wait_tcp


def free_udp_tcp_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (the DNS responder needs both)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no port free for both TCP and UDP")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def require_root() -> None:
    """Skip without root, with a reason; under CI=true a missing root is a failure instead."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("this test needs root and CI=true: it must run, not skip")
        pytest.skip("needs root (raw ICMP sockets)")


def require_tool(name: str) -> str:
    """Path of a tool, or skip with a reason (a failure under CI=true, where make test installs it)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed; make test installs it (tests/install-deps.sh)")
        pytest.skip(f"{name} not installed (make test installs it)")
    return path


@dataclass
class Collector:
    processes: Processes
    workdir: Path
    tokens: dict[str, str]
    port: int = field(default_factory=free_port)
    name: str = "collector"
    #: YAML of listen.tls (`{cert_file: ..., key_file: ...}`): the collector speaks HTTPS
    tls: str = ""
    #: more top-level YAML for the config (e.g. `metrics_listen: {...}`)
    extra: str = ""

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.workdir / "collector.db"

    def write_config(self) -> Path:
        probes = "\n".join(
            f"  - {{id: {probe}, token_sha256: {hashlib.sha256(token.encode()).hexdigest()}}}"
            for probe, token in self.tokens.items()
        )
        path = self.workdir / "collector.yaml"
        path.write_text(
            f"listen: {{host: 127.0.0.1, port: {self.port}{', tls: ' + self.tls if self.tls else ''}}}\n"
            f"store: {{backend: sqlite, path: \"{self.db}\"}}\n"
            f"probes:\n{probes}\n"
            + self.extra
        )
        return path

    def start(self) -> None:
        config = self.write_config()
        self.process = self.processes.start(PYTHON, "-m", "qiancheng.collector.main", "--config", str(config), name=self.name)
        wait_tcp(self.port)

    def stored(self) -> list[tuple[str, int]]:
        """(probe_id, seq) of every stored result."""
        with closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as db:
            return [(str(p), int(s)) for p, s in db.execute("SELECT probe_id, seq FROM results ORDER BY probe_id, seq")]

    def kinds_stored(self) -> set[str]:
        with closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as db:
            return {str(k) for (k,) in db.execute("SELECT DISTINCT kind FROM results")}

    def metrics(self) -> str:
        return http_get(self.url + "/metrics")[1].decode()

    def latest(self) -> Any:
        return json.loads(http_get(self.url + "/api/v1/latest")[1])


@dataclass
class Responder:
    processes: Processes
    http_port: int = field(default_factory=free_port)
    echo_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_udp_tcp_port)
    stamp_port: int = 0  # the STAMP reflector is off unless a test gives it a port (8620 would clash)

    def start(self) -> None:
        self.process = self.processes.start(
            PYTHON, "-m", "qiancheng.probes.responder.main", "--listen", "127.0.0.1",
            "--http-port", str(self.http_port), "--echo-port", str(self.echo_port), "--dns-port", str(self.dns_port),
            "--stamp-port", str(self.stamp_port), name="responder",
        )
        wait_tcp(self.http_port)
        wait_tcp(self.echo_port)


def probe_config(path: Path, probe_id: str, token: str, collector: Collector, targets: str, city: str = "lishui",
                 interval: str = "1s", collector_extra: str = "") -> Path:
    """`collector_extra`: more keys of the collector mapping, e.g. `, ca_file: /x/ca.pem`."""
    path.write_text(
        f"probe: {{id: {probe_id}, city: {city}, isp: test-isp}}\n"
        f"collector: {{url: \"{collector.url}\", token: \"{token}\", batch_max_age: 300ms, backoff_base: 100ms, backoff_cap: 1s, timeout: 2s{collector_extra}}}\n"
        f"spool: {{path: \"{path.parent / (probe_id + '-spool.db')}\"}}\n"
        f"scheduler: {{shutdown_flush: 3s}}\n"
        f"defaults:\n"
        f"  icmp: {{interval: {interval}, count: 5, packet_interval: 20ms, timeout: 500ms}}\n"
        f"  tcp: {{interval: {interval}, count: 3, packet_interval: 50ms, timeout: 500ms}}\n"
        f"  dns: {{interval: {interval}, timeout: 500ms}}\n"
        f"  http: {{interval: {interval}, timeout: 900ms}}\n"
        f"targets:\n{targets}"
    )
    return path


def wait_for(condition: Any, timeout: float, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
            if last:
                return
        except Exception as error:  # noqa: BLE001 - keep polling; report the last error
            last = error
        time.sleep(step)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def probe_once_json(*args: str, setup: str = "", drop_net_raw: bool = False, timeout: float = 60) -> list[dict[str, Any]]:
    """Run `qiancheng-probe once --json ARGS` and return its results.

    With `setup`, the probe runs in a private network namespace (`unshare -n`) that has only loopback,
    after the shell commands in `setup` (sysctls, nftables rules) have shaped it; nothing leaves it.
    With `drop_net_raw`, CAP_NET_RAW is removed from the probe's bounding set, as for an unprivileged probe.
    """
    command = [PYTHON, "-m", "qiancheng.probes.cli", "once", "--json", *args]
    if drop_net_raw:
        command = [require_tool("setpriv"), "--bounding-set=-net_raw", *command]
    if setup:
        command = [require_tool("unshare"), "-n", "sh", "-ec", f"ip link set lo up\n{setup}\nexec \"$@\"", "sh", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode in (0, 1), f"exit {done.returncode}: {done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def spool_counters(path: Path) -> tuple[int, int]:
    """(results measured in total, results still waiting) of a stopped probe's spool file."""

    async def read() -> tuple[int, int]:
        spool = Spool(str(path), max_bytes=1 << 30)
        try:
            counters = await spool.counters()
            return counters.measured_total, counters.backlog
        finally:
            spool.close()

    return asyncio.run(read())


def ingest_answers(metrics: str, code: int) -> float:
    """How many pushes the collector answered with `code`, from its /metrics text."""
    match = re.search(rf'^qiancheng_ingest_requests_total\{{code="{code}"\}} (\S+)$', metrics, re.M)
    return float(match[1]) if match else 0.0


def tls_files(directory: Path) -> tuple[str, str, ssl.SSLContext]:
    """A collector's `listen.tls` YAML from a fresh CA (trustme) with a certificate for 127.0.0.1, the CA
    file a probe trusts, and a client context for the test's own requests."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = directory / "server.crt", directory / "server.key", directory / "ca.pem"
    cert_file.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    return f"{{cert_file: '{cert_file}', key_file: '{key_file}'}}", str(ca_file), ssl.create_default_context(cafile=str(ca_file))
