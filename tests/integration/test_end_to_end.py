"""Collector, responder and probe as real processes on loopback: every kind reaches SQLite and /metrics."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import PYTHON, Processes
from tests.integration.helpers import Collector, Responder, probe_config, require_root, require_tool, wait_for

KINDS = {"icmp", "tcp", "dns", "http"}


def test_every_kind_reaches_store_and_metrics(processes: Processes, tmp_path: Path) -> None:
    require_root()
    promtool = require_tool("promtool")
    responder = Responder(processes)
    responder.start()
    collector = Collector(processes, tmp_path, tokens={"e2e-probe": "token-e2e"})
    collector.start()
    targets = (
        f"  - {{name: edge, address: 127.0.0.1, class: edge, kinds: {{icmp: {{}}, tcp: {{port: {responder.echo_port}}}}}}}\n"
        f"  - {{name: pool-web, address: 'http://127.0.0.1:{responder.http_port}/ping', class: cloud_pool, kinds: [http]}}\n"
        f"  - {{name: resolver, address: '127.0.0.1:{responder.dns_port}', class: dns, kinds: {{dns: {{query_name: www.qiancheng.test}}}}}}\n"
    )
    config = probe_config(tmp_path / "probe.yaml", "e2e-probe", "token-e2e", collector, targets)
    probe = processes.start(PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(config), name="probe")

    wait_for(lambda: collector.kinds_stored() >= KINDS, 20, "a result of every kind in SQLite")
    wait_for(lambda: all(f'kind="{k}"' in collector.metrics() for k in KINDS), 10, "every kind in /metrics")

    metrics = collector.metrics()
    assert re.search(r'^qiancheng_rtt_seconds_bucket\{.*kind="icmp".*\} [1-9]', metrics, re.M)
    assert re.search(r'^qiancheng_rtt_seconds_bucket\{.*kind="tcp".*\} [1-9]', metrics, re.M)
    assert re.search(r'^qiancheng_test_success\{.*kind="dns".*target="resolver".*\} 1', metrics, re.M)
    assert re.search(r'^qiancheng_http_phase_seconds\{.*phase="ttfb".*\} ', metrics, re.M)
    assert 'qiancheng_probe_last_seen_timestamp_seconds{' in metrics
    lint = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    # every stored result succeeded: the responder and loopback are healthy
    latest = collector.latest()
    outcomes = {(r["result"]["target"]["name"], r["result"]["kind"]): r["result"]["success"] for r in latest["results"]}
    assert outcomes == {("edge", "icmp"): True, ("edge", "tcp"): True, ("pool-web", "http"): True, ("resolver", "dns"): True}

    # SIGTERM: the probe flushes and exits within 5 s
    stopped = time.monotonic()
    probe.send_signal(signal.SIGTERM)
    assert probe.wait(timeout=6) == 0
    assert time.monotonic() - stopped < 5.0
    assert "probe_stopped" in processes.log("probe")
