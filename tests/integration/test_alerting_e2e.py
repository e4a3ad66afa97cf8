"""End to end, real parts only: probes in two cities push to a collector that judges SLAs; Prometheus
scrapes it and evaluates the shipped rules (30 times faster); Alertmanager, with the shipped routing and
inhibition, notifies a webhook receiver. Then faults: loss on one probe's line (probe-local), the
responder stopped (target-wide), one probe stopped (silent). The right alert must reach the receiver in
bounded time, the alerts it explains must be held back, and each must resolve after recovery.

Network: the collector and the responder listen on the host end of a veth pair into a namespace this
test makes (198.19.x.1/30); one probe runs inside the namespace, where nftables drops a share of its
test packets; the others run on the host. Everything is torn down, also on failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, Processes, free_port, wait_tcp
from tests.integration.alerting import (
    WebhookReceiver,
    alertmanager_alerts,
    alertmanager_config,
    faster_rules,
    prometheus_alerts,
    prometheus_config,
    start_alertmanager,
    start_prometheus,
)
from tests.integration.helpers import require_root, require_tool, wait_for

ROOT = Path(__file__).parents[2]
#: the shipped rules run this many times faster: [5m] windows become [10s], `for: 1m` becomes 2s,
#: ProbeSilent's 90 s becomes 3 s (3 push intervals of probes that test every second)
SPEEDUP = 30
LOSS_PERCENT = 30
PROBES = {  # probe id → city; the first one runs in the namespace, behind the lossy line
    "lishui-1": "lishui",
    "lishui-2": "lishui",
    "qdn-1": "qiandongnan",
    "qdn-2": "qiandongnan",
}
#: every bound below is what the configuration implies, with room for a loaded machine: a fault shows in
#: the next test (≤ 1 s), a batch (≤ 0.3 s), a scrape and an evaluation (1 s each), the collector's
#: hysteresis (2 passes of 1 s), the rule's `for:` (2 to 6 s) and Alertmanager's group wait (2 to 3 s)
NOTIFY_WITHIN = 30.0
RESOLVE_WITHIN = 45.0


@dataclass
class HostLink:
    """A namespace joined to the host by a veth pair: the host end and the namespace end's addresses."""

    namespace: str
    host_address: str
    namespace_address: str

    def nft(self, ruleset: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.namespace, "nft", "-f", "-"], input=ruleset, text=True,
                       check=True, capture_output=True)  # fmt: skip


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def host_link() -> Iterator[HostLink]:
    require_root()
    require_tool("ip")
    require_tool("nft")
    pid = os.getpid()
    name, host_dev, ns_dev = f"qal{pid}", f"qal{pid}h", f"qal{pid}n"
    subnet = f"198.19.{200 + pid % 50}"
    link = HostLink(name, f"{subnet}.1", f"{subnet}.2")
    try:
        _ip("netns", "add", name)
        _ip("link", "add", host_dev, "type", "veth", "peer", "name", ns_dev, "netns", name)
        _ip("addr", "add", f"{link.host_address}/30", "dev", host_dev)
        _ip("link", "set", host_dev, "up")
        _ip("-n", name, "addr", "add", f"{link.namespace_address}/30", "dev", ns_dev)
        _ip("-n", name, "link", "set", ns_dev, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield link
    finally:
        subprocess.run(["ip", "link", "del", host_dev], capture_output=True)  # also removes the namespace end
        subprocess.run(["ip", "netns", "del", name], capture_output=True)  # and the nft table inside it


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


def _token(probe: str) -> str:
    return f"token-{probe}-0123456789abcdef"


def _write_collector_config(workdir: Path, host: str, port: int) -> Path:
    probes = "\n".join(f"  - {{id: {p}, token_sha256: {hashlib.sha256(_token(p).encode()).hexdigest()}}}" for p in PROBES)
    path = workdir / "collector.yaml"
    path.write_text(
        f"listen: {{host: {host}, port: {port}}}\n"
        f"store: {{backend: sqlite, path: \"{workdir / 'collector.db'}\"}}\n"
        f"probes:\n{probes}\n"
        f"sla: {{profiles: \"{ROOT / 'configs' / 'sla.yaml'}\", windows: [10s, 1m], interval: 1s, open_after: 2, close_after: 2}}\n"
    )
    return path


def _write_probe_config(workdir: Path, probe: str, collector: str, host: str, echo_port: int, http_port: int) -> Path:
    path = workdir / f"{probe}.yaml"
    path.write_text(
        f"probe: {{id: {probe}, city: {PROBES[probe]}, isp: test-isp}}\n"
        f"collector: {{url: \"{collector}\", token: \"{_token(probe)}\", batch_max_age: 300ms, backoff_base: 100ms, backoff_cap: 1s, timeout: 2s}}\n"
        f"spool: {{path: \"{workdir / (probe + '-spool.db')}\"}}\n"
        f"scheduler: {{shutdown_flush: 2s}}\n"
        f"defaults:\n"
        f"  icmp: {{interval: 1s, count: 5, packet_interval: 20ms, timeout: 500ms}}\n"
        f"  tcp: {{interval: 1s, count: 3, packet_interval: 50ms, timeout: 500ms}}\n"
        f"  http: {{interval: 1s, timeout: 900ms}}\n"
        f"targets:\n"
        f"  - {{name: edge-echo, address: {host}, class: edge, kinds: {{tcp: {{port: {echo_port}}}}}}}\n"
        f"  - {{name: edge-ping, address: {host}, class: edge, kinds: [icmp]}}\n"
        f"  - {{name: pool-web, address: 'http://{host}:{http_port}/ping', class: cloud_pool, kinds: [http]}}\n"
    )
    return path


class Stack:
    """The running system; `first(...)` waits for a notification and says how long it took."""

    def __init__(self, processes: Processes, tmp_path: Path, link: HostLink, webhook: WebhookReceiver) -> None:
        self.processes, self.tmp_path, self.link, self.webhook = processes, tmp_path, link, webhook
        host = link.host_address
        self.collector_port, self.http_port, self.echo_port = free_port(host=host), free_port(host=host), free_port(host=host)
        self.dns_port = free_port(host=host)
        self.start_responder()
        self.collector_url = f"http://{host}:{self.collector_port}"
        processes.start(PYTHON, "-m", "qiancheng.collector.main", "--config",
                        str(_write_collector_config(tmp_path, host, self.collector_port)), name="collector")  # fmt: skip
        wait_tcp(self.collector_port, host=host)
        self.probes: dict[str, Any] = {probe: self.start_probe(probe) for probe in PROBES}
        alertmanager = start_alertmanager(processes, tmp_path, alertmanager_config(webhook, {"critical": "2s", "warning": "3s"}, "2s"))
        rules = tmp_path / "rules.yml"
        rules.write_text(faster_rules(SPEEDUP))
        self.alertmanager = alertmanager
        self.prometheus = start_prometheus(
            processes, tmp_path,
            prometheus_config(rules, f"{host}:{self.collector_port}", alertmanager.removeprefix("http://"), "1s"),
        )  # fmt: skip

    def start_responder(self) -> None:
        self.responder = self.processes.start(
            PYTHON, "-m", "qiancheng.probes.responder.main", "--listen", self.link.host_address,
            "--http-port", str(self.http_port), "--echo-port", str(self.echo_port), "--dns-port", str(self.dns_port),
            "--stamp-port", "0", name="responder",
        )  # fmt: skip
        wait_tcp(self.http_port, host=self.link.host_address)
        wait_tcp(self.echo_port, host=self.link.host_address)

    def start_probe(self, probe: str) -> Any:
        config = _write_probe_config(self.tmp_path, probe, self.collector_url, self.link.host_address, self.echo_port, self.http_port)
        command = [PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(config)]
        if probe == "lishui-1":
            command = ["ip", "netns", "exec", self.link.namespace, *command]
        return self.processes.start(*command, name=probe)

    def sla(self, **query: str) -> list[dict[str, Any]]:
        url = self.collector_url + "/api/v1/sla?" + "&".join(f"{k}={v}" for k, v in query.items())
        with urllib.request.urlopen(url, timeout=5) as response:
            objectives: list[dict[str, Any]] = json.loads(response.read())["objectives"]
            return objectives

    def firing(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        return [a for a in prometheus_alerts(self.prometheus) if a["state"] == "firing"
                and a["labels"]["alertname"] == alertname and all(a["labels"].get(k) == v for k, v in labels.items())]  # fmt: skip

    def held_back(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds but inhibits."""
        return [a for a in alertmanager_alerts(self.alertmanager) if a["status"]["inhibitedBy"]
                and a["labels"]["alertname"] == alertname and all(a["labels"].get(k) == v for k, v in labels.items())]  # fmt: skip

    def first(self, alertname: str, since: float, within: float, status: str = "firing", **labels: str) -> tuple[float, dict[str, Any]]:
        """Seconds from `since` to the first notification of that alert (failing after `within` s), and the alert."""
        wait_for(lambda: self.webhook.find(alertname, status, since, **labels), within,
                 f"{status} {alertname} {labels} at the webhook")  # fmt: skip
        notification, alert = self.webhook.find(alertname, status, since, **labels)[0]
        return notification.received - since, {**alert, "receiver": notification.path}


def test_faults_reach_the_noc_once_localized_and_resolve(
    host_link: HostLink, processes: Processes, tmp_path: Path, webhook: WebhookReceiver
) -> None:
    stack = Stack(processes, tmp_path, host_link, webhook)
    started = time.monotonic()
    figures: dict[str, float] = {}

    # healthy first: every probe judged, nothing firing
    def healthy() -> bool:
        judged = {o["probe"] for o in stack.sla(target="edge-echo") if o["indicator"] == "loss" and o["status"] == "ok"}
        return judged == set(PROBES) and not [a for a in prometheus_alerts(stack.prometheus) if a["state"] == "firing"]

    wait_for(healthy, 60, "every probe judged ok and no alert firing")

    # 1. loss on lishui-1's line: its targets degrade for it alone → one ProbeLocalDegradation on that probe
    fault = time.monotonic()
    table = f"qal{os.getpid()}"
    host, ports = host_link.host_address, f"{stack.echo_port}, {stack.http_port}"
    host_link.nft(f"table inet {table} {{\n chain output {{\n  type filter hook output priority 0; policy accept;\n"
                  f"  ip daddr {host} tcp dport {{ {ports} }} numgen random mod 100 < {LOSS_PERCENT} drop\n"
                  f"  ip daddr {host} icmp type echo-request numgen random mod 100 < {LOSS_PERCENT} drop\n }}\n}}\n")  # fmt: skip
    figures["probe-local"], alert = stack.first("ProbeLocalDegradation", fault, NOTIFY_WITHIN, probe="lishui-1")
    assert (alert["labels"]["severity"], alert["labels"]["city"], alert["receiver"]) == ("warning", "lishui", "/noc-warning")
    # its per-target SLA breaches fire in Prometheus, and Alertmanager holds them back
    wait_for(lambda: stack.firing("SLABreach", probe="lishui-1"), NOTIFY_WITHIN, "SLABreach of lishui-1 firing in Prometheus")
    wait_for(lambda: stack.held_back("SLABreach", probe="lishui-1"), 10, "SLABreach of lishui-1 inhibited")
    host_link.nft(f"delete table inet {table}\n")
    recovered = time.monotonic()
    figures["probe-local resolved"], _ = stack.first("ProbeLocalDegradation", recovered, RESOLVE_WITHIN, "resolved", probe="lishui-1")

    # 2. the responder stops: both targets it serves degrade from every city → TargetWideDegradation each
    fault = time.monotonic()
    stack.responder.send_signal(signal.SIGTERM)
    assert stack.responder.wait(timeout=10) == 0
    for target, target_class in (("edge-echo", "edge"), ("pool-web", "cloud_pool")):
        seconds, alert = stack.first("TargetWideDegradation", fault, NOTIFY_WITHIN, target=target)
        figures[f"target-wide {target}"] = seconds
        assert (alert["labels"]["severity"], alert["labels"]["target_class"], alert["receiver"]) == ("critical", target_class, "/noc-critical")
    # every probe's own alert on edge-echo fires, and is held back
    wait_for(lambda: len(stack.firing("TargetUnreachable", target="edge-echo")) == len(PROBES), NOTIFY_WITHIN,
             "TargetUnreachable on edge-echo from every probe")  # fmt: skip
    wait_for(lambda: len(stack.held_back("TargetUnreachable", target="edge-echo")) == len(PROBES), 10,
             "TargetUnreachable on edge-echo inhibited for every probe")  # fmt: skip
    recovered = time.monotonic()
    stack.start_responder()
    for target in ("edge-echo", "pool-web"):
        seconds, _ = stack.first("TargetWideDegradation", recovered, RESOLVE_WITHIN, "resolved", target=target)
        figures[f"target-wide {target} resolved"] = seconds

    # 3. qdn-2 stops: ProbeSilent; its targets then show no success, and those alerts are held back
    fault = time.monotonic()
    stack.probes["qdn-2"].send_signal(signal.SIGTERM)
    assert stack.probes["qdn-2"].wait(timeout=10) == 0
    figures["probe silent"], alert = stack.first("ProbeSilent", fault, NOTIFY_WITHIN, probe="qdn-2")
    assert (alert["labels"]["severity"], alert["labels"]["city"], alert["receiver"]) == ("warning", "qiandongnan", "/noc-warning")
    wait_for(lambda: len(stack.firing("TargetUnreachable", probe="qdn-2")) == 3, NOTIFY_WITHIN, "TargetUnreachable of qdn-2 firing")
    wait_for(lambda: len(stack.held_back("TargetUnreachable", probe="qdn-2")) == 3, 10, "TargetUnreachable of qdn-2 inhibited")
    recovered = time.monotonic()
    stack.probes["qdn-2"] = stack.start_probe("qdn-2")
    figures["probe silent resolved"], _ = stack.first("ProbeSilent", recovered, RESOLVE_WITHIN, "resolved", probe="qdn-2")
    wait_for(lambda: not stack.firing("TargetUnreachable"), RESOLVE_WITHIN, "no TargetUnreachable firing after recovery")
    time.sleep(3)  # one group interval more: nothing held back slips out late

    # nothing explained by a wider alert was ever notified
    delivered = sorted({(a["labels"]["alertname"], a["labels"].get("probe", ""), a["labels"].get("city", ""), a["labels"].get("target", ""))
                        for _, a in webhook.received(started)})  # fmt: skip
    leaked = [d for d in delivered if d[0] in ("CityWideDegradation", "TargetUnreachable")
              or (d[0] == "SLABreach" and (d[1] == "lishui-1" or d[3] in ("edge-echo", "pool-web")))]  # fmt: skip
    assert not leaked, f"notified although a wider alert explains them: {leaked} (all: {delivered})"
    print("\nfault → notification, recovery → resolved notification (seconds):")
    for name, seconds in figures.items():
        print(f"  {name:32} {seconds:5.1f}")
    print(f"  whole test {time.monotonic() - started:.0f} s after start-up")
