"""Building blocks for alerting tests: a webhook receiver that records what Alertmanager sends, and real
Prometheus and Alertmanager processes on loopback with configs derived from the shipped ones."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Processes, free_port, wait_tcp
from tests.integration.helpers import require_tool, wait_for

__all__ = [
    "Notification",
    "WebhookReceiver",
    "alertmanager_config",
    "start_alertmanager",
    "alertmanager_alerts",
    "faster_rules",
    "prometheus_config",
    "start_prometheus",
    "prometheus_alerts",
]

ROOT = Path(__file__).parents[2]
SHIPPED_ALERTMANAGER = ROOT / "configs" / "alertmanager" / "alertmanager.yml"
SHIPPED_PROMETHEUS = ROOT / "configs" / "prometheus" / "prometheus.yml"
SHIPPED_RULES = ROOT / "configs" / "prometheus" / "qiancheng.rules.yml"


@dataclass(frozen=True)
class Notification:
    """One POST from Alertmanager: the path it came to (its receiver), when (monotonic s), and its body."""

    path: str
    received: float
    body: dict[str, Any]

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return list(self.body.get("alerts", []))


class WebhookReceiver:
    """Listens on 127.0.0.1 (a free port) in a thread; `url(path)` for Alertmanager's webhook_configs."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with receiver._lock:
                    receiver.notifications.append(Notification(self.path, time.monotonic(), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the signature http.server uses
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="alert-webhook", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self, since: float = 0.0) -> list[tuple[Notification, dict[str, Any]]]:
        """Every (notification, alert) that arrived at or after `since` (monotonic s)."""
        with self._lock:
            return [(n, alert) for n in self.notifications if n.received >= since for alert in n.alerts]

    def find(self, alertname: str, status: str = "firing", since: float = 0.0, **labels: str) -> list[tuple[Notification, dict[str, Any]]]:
        """Alerts of that name and status whose labels include `labels`."""
        return [
            (n, a) for n, a in self.received(since)
            if a["labels"].get("alertname") == alertname and a["status"] == status
            and all(a["labels"].get(k) == v for k, v in labels.items())
        ]  # fmt: skip

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def alertmanager_config(receiver: WebhookReceiver, group_wait: dict[str, str], group_interval: str) -> dict[str, Any]:
    """The shipped config with its receivers pointed at `receiver` (path /<receiver name>) and shorter waits."""
    config: dict[str, Any] = yaml.safe_load(SHIPPED_ALERTMANAGER.read_text())
    for entry in config["receivers"]:
        for hook in entry["webhook_configs"]:
            hook["url"] = receiver.url("/" + entry["name"])
    config["route"]["group_interval"] = group_interval
    for route in config["route"]["routes"]:
        severity = route["matchers"][0].split("=")[1].strip('"')
        route["group_wait"] = group_wait[severity]
        route["group_interval"] = group_interval
    return config


def start_alertmanager(processes: Processes, workdir: Path, config: dict[str, Any]) -> str:
    """A real Alertmanager on 127.0.0.1 (no clustering); returns its URL once it is ready."""
    binary = require_tool("prometheus-alertmanager")
    path = workdir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    processes.start(binary, f"--config.file={path}", f"--storage.path={workdir / 'alertmanager-data'}",
                    f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn",
                    name="alertmanager")  # fmt: skip
    wait_tcp(port)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: urllib.request.urlopen(url + "/-/ready", timeout=1).status == 200, 15, "alertmanager ready")
    return url


def alertmanager_alerts(url: str) -> list[dict[str, Any]]:
    """The alerts Alertmanager holds, each with `status.inhibitedBy`."""
    alerts: list[dict[str, Any]] = _get_json(url + "/api/v2/alerts")
    return alerts


def faster_rules(speedup: int) -> str:
    """The shipped rules with every range, `for:` and ProbeSilent's threshold divided by `speedup`."""
    text = SHIPPED_RULES.read_text()
    units = {"s": 1, "m": 60, "h": 3600}

    def seconds(number: str, unit: str) -> str:
        value = int(number) * units[unit] / speedup
        assert value == int(value), f"{number}{unit} does not divide by {speedup}"
        return f"{int(value)}s"

    text = re.sub(r"\[(\d+)([smh])\]", lambda m: f"[{seconds(m[1], m[2])}]", text)
    text = re.sub(r"for: (\d+)([smh])", lambda m: f"for: {seconds(m[1], m[2])}", text)
    silent = "time() - qiancheng_probe_last_seen_timestamp_seconds > 90"
    assert text.count(silent) == 1, "ProbeSilent's expression changed: update faster_rules"
    return text.replace(silent, f"time() - qiancheng_probe_last_seen_timestamp_seconds > {90 // speedup}")


def prometheus_config(rules: Path, scrape: str, alertmanager: str, interval: str) -> dict[str, Any]:
    """The shipped config scraping `scrape` (host:port) every `interval`, with `rules`, alerting `alertmanager`."""
    config: dict[str, Any] = yaml.safe_load(SHIPPED_PROMETHEUS.read_text())
    config["global"] = {"scrape_interval": interval, "evaluation_interval": interval}
    config["rule_files"] = [str(rules)]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [alertmanager]}]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [scrape]}]
    return config


def start_prometheus(processes: Processes, workdir: Path, config: dict[str, Any]) -> str:
    """A real Prometheus on 127.0.0.1 with its TSDB in `workdir`; returns its URL once it is ready."""
    binary = require_tool("prometheus")
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    processes.start(binary, f"--config.file={path}", f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn", name="prometheus")  # fmt: skip
    wait_tcp(port, timeout=30)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: urllib.request.urlopen(url + "/-/ready", timeout=1).status == 200, 30, "prometheus ready")
    return url


def prometheus_alerts(url: str) -> list[dict[str, Any]]:
    """Prometheus' pending and firing alerts, each with `labels` and `state`."""
    alerts: list[dict[str, Any]] = _get_json(url + "/api/v1/alerts")["data"]["alerts"]
    return alerts
