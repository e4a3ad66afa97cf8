"""Time-series servers as real processes on loopback: VictoriaMetrics (the InfluxDB write API, read back
through its Prometheus API), Prometheus scraping collectors, and a collector that writes to InfluxDB."""

from __future__ import annotations

import hashlib
import json
import signal
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import Processes, free_port, wait_tcp
from tests.integration.helpers import Collector, Responder, http_get, require_tool, wait_for

Series = tuple[tuple[str, str], ...]


def http_post_form(url: str, form: dict[str, str] | list[tuple[str, str]], timeout: float = 10.0) -> Any:
    data = urllib.parse.urlencode(form).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as response:
        return response.read()


@dataclass
class VictoriaMetrics:
    """victoria-metrics with its data in `workdir`; no deduplication, so a sample written twice shows twice."""

    processes: Processes
    workdir: Path
    port: int = field(default_factory=free_port)
    name: str = "victoria-metrics"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = require_tool("victoria-metrics")
        self.process = self.processes.start(
            binary, f"-storageDataPath={self.workdir / 'vm-data'}", f"-httpListenAddr=127.0.0.1:{self.port}",
            "-loggerLevel=ERROR", "-search.latencyOffset=0s", "-retentionPeriod=100y", name=self.name,
        )  # fmt: skip
        wait_tcp(self.port)
        wait_for(lambda: http_get(self.url + "/health")[0] == 200, 10, "victoria-metrics healthy")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=15)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but nothing answers (a store that hangs)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def settle(self) -> None:
        """Wait until everything written so far is searchable: new series reach the index within a second
        or two, so write a marker series last and wait until it can be read."""
        self._marks = getattr(self, "_marks", 0) + 1
        line = f"qdb_marker,run={self._marks} seen=1 {time.time_ns()}".encode()
        urllib.request.urlopen(urllib.request.Request(self.url + "/write", data=line), timeout=10).read()

        def visible() -> bool:
            http_get(self.url + "/internal/force_flush")
            body = http_post_form(self.url + "/api/v1/export", [("match[]", f'qdb_marker_seen{{run="{self._marks}"}}')])
            return bool(body.strip())

        wait_for(visible, 15, "victoria-metrics to make recent writes searchable", step=0.1)

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every raw sample of the series matching `match` (call `settle` first after writes)."""
        body = http_post_form(self.url + "/api/v1/export", [("match[]", match)])
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]

    def samples(self, match: str, drop: tuple[str, ...] = ()) -> dict[Series, list[tuple[int, float]]]:
        """(timestamp ms, value) per series (labels without __name__ and `drop`), sorted by time."""
        out: dict[Series, list[tuple[int, float]]] = defaultdict(list)
        for line in self.export(match):
            labels = tuple(sorted((k, v) for k, v in line["metric"].items() if k != "__name__" and k not in drop))
            name = line["metric"]["__name__"]
            out[(("__name__", name), *labels)].extend(zip(line["timestamps"], line["values"], strict=True))
        return {series: sorted(points) for series, points in out.items()}


@dataclass
class InfluxCollector(Collector):
    """A collector whose store is the InfluxDB write API of `influx_url`."""

    influx_url: str = ""
    timeout: str = "2s"

    def write_config(self) -> Path:
        probes = "\n".join(
            f"  - {{id: {probe}, token_sha256: {hashlib.sha256(token.encode()).hexdigest()}}}"
            for probe, token in self.tokens.items()
        )
        path = self.workdir / f"{self.name}.yaml"
        path.write_text(
            f"listen: {{host: 127.0.0.1, port: {self.port}}}\n"
            f"store:\n  backend: influx\n"
            f"  path: \"{self.workdir / (self.name + '.db')}\"\n"  # beside it: the registry
            f"  influx: {{url: \"{self.influx_url}\", org: qiancheng, bucket: results, timeout: {self.timeout}}}\n"
            f"probes:\n{probes}\n"
        )
        return path


@dataclass
class Prometheus:
    """Prometheus scraping `targets` (host:port) every second, with its TSDB in `workdir`."""

    processes: Processes
    workdir: Path
    targets: list[str]
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = require_tool("prometheus")
        config = self.workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: qiancheng\n    static_configs:\n      - targets: {json.dumps(self.targets)}\n"
        )
        self.process = self.processes.start(
            binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn", name="prometheus",
        )  # fmt: skip
        wait_tcp(self.port, timeout=30)
        wait_for(lambda: http_get(self.url + "/-/ready")[0] == 200, 30, "prometheus ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector; raises on a query Prometheus refuses."""
        answer = json.loads(http_post_form(self.url + "/api/v1/query", {"query": expr}))
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        form = {"query": expr, "start": str(start), "end": str(end), "step": str(step)}
        answer = json.loads(http_post_form(self.url + "/api/v1/query_range", form))
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


@dataclass
class JudgingCollector(Collector):
    """A SQLite collector that also judges SLAs (configs/sla.yaml) every second over a 10 s window."""

    def write_config(self) -> Path:
        path = super().write_config()
        profiles = Path(__file__).resolve().parents[2] / "configs" / "sla.yaml"
        with path.open("a") as config:
            config.write(f"sla: {{profiles: \"{profiles}\", windows: [10s], interval: 1s, open_after: 1, close_after: 1}}\n")
        return path


def city_targets(responder: Responder) -> str:
    """Targets of every class the city scorecard shows, all served by one responder on loopback."""
    echo, web, dns = f"127.0.0.1:{responder.echo_port}", f"http://127.0.0.1:{responder.http_port}/ping", responder.dns_port
    return (
        f"  - {{name: edge-echo, address: '{echo}', class: edge, kinds: [tcp]}}\n"
        f"  - {{name: loopback, address: 127.0.0.1, class: edge, kinds: [icmp]}}\n"
        f"  - {{name: pool-echo, address: '{echo}', class: cloud_pool, kinds: [tcp]}}\n"
        f"  - {{name: cdn-echo, address: '{echo}', class: cdn, kinds: [tcp]}}\n"
        f"  - {{name: cdn-web, address: '{web}', class: cdn, kinds: [http]}}\n"
        f"  - {{name: hub-echo, address: '{echo}', class: national_hub, kinds: [tcp]}}\n"
        f"  - {{name: resolver, address: '127.0.0.1:{dns}', class: dns, kinds: {{dns: {{query_name: www.qiancheng.test}}}}}}\n"
    )
