"""SLA judgement on the influx backend, all parts real: a probe measures a target served by a real
responder and pushes to a collector whose store is victoria-metrics (InfluxDB write API) and which
judges SLAs from its window cache. The new cache says no data until its window is whole; the judgement
shows values; a restart keeps the cache and so the windows; stopping the responder (the target becomes
unreachable) opens an availability breach in GET /api/v1/sla and /metrics; and every result is in
victoria-metrics as well. About 25 s."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PYTHON, Processes, wait_tcp
from tests.integration.helpers import Responder, http_get, probe_config, wait_for
from tests.integration.timeseries import InfluxCollector, VictoriaMetrics

WINDOW_SECONDS = 10
SLA_YAML = Path(__file__).resolve().parents[2] / "configs" / "sla.yaml"


@dataclass
class JudgingInfluxCollector(InfluxCollector):
    """An influx collector judging configs/sla.yaml every second over one window, from its window cache."""

    def write_config(self) -> Path:
        path = super().write_config()
        with path.open("a") as config:
            config.write(f"sla: {{profiles: \"{SLA_YAML}\", cache: \"{self.workdir / 'sla-cache.db'}\", "
                         f"windows: [{WINDOW_SECONDS}s], interval: 1s, open_after: 1, close_after: 1}}\n")  # fmt: skip
        return path

    def availability(self) -> dict[str, Any] | None:
        """The edge target's availability objective of the edge_local profile in the latest pass, if any."""
        body = json.loads(http_get(self.url + "/api/v1/sla?target=edge-echo&profile=edge_local")[1])
        found = [o for o in body["objectives"] if o["indicator"] == "availability"]
        return {**found[0], "judged_ns": body["judged_ns"]} if found else None


def breach_samples(metrics: str) -> dict[str, float]:
    """qiancheng_sla_breach of the edge target by (profile, indicator) → value."""
    return {
        f"{s.labels['profile']}/{s.labels['indicator']}": s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "qiancheng_sla_breach" and s.labels["target"] == "edge-echo"
    }


def test_judges_real_probe_results_from_the_cache_while_victoria_metrics_keeps_them(
    processes: Processes, tmp_path: Path
) -> None:
    store = VictoriaMetrics(processes, tmp_path)
    store.start()
    responder = Responder(processes)
    responder.start()
    token = "token-sla-influx-0001"
    collector = JudgingInfluxCollector(processes, tmp_path, tokens={"p-sla": token}, influx_url=store.url)
    opened_after_ns = time.time_ns()  # the cache is created after this: it holds nothing from before
    collector.start()
    targets = f"  - {{name: edge-echo, address: '127.0.0.1:{responder.echo_port}', class: edge, kinds: [tcp]}}\n"
    config = probe_config(tmp_path / "p-sla.yaml", "p-sla", token, collector, targets)
    processes.start(PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(config), name="p-sla")

    # a new cache: the first judgement of real results comes before its window could be whole, so no data
    wait_for(lambda: (collector.availability() or {}).get("windows", [{}])[0].get("results"), 20, "results judged")
    first = collector.availability()
    assert first is not None and first["judged_ns"] < opened_after_ns + WINDOW_SECONDS * 10**9, first
    assert first["status"] == "no_data" and first["windows"][0]["value"] is None, first

    # once the window lies wholly after the cache's start, the real results are judged
    wait_for(lambda: (collector.availability() or {}).get("status") == "ok", WINDOW_SECONDS + 15, "availability ok")
    ok = collector.availability()
    assert ok is not None and ok["windows"][0]["value"] == 1.0 and ok["windows"][0]["results"] >= 5, ok

    # a restart keeps the cache file: the first pass after it already has a whole window (the kept cache
    # vouches from its oldest batch on, received before the first judgement that read results)
    time.sleep(max(0.0, (first["judged_ns"] + WINDOW_SECONDS * 10**9 - time.time_ns()) / 1e9))
    collector.process.send_signal(signal.SIGTERM)
    collector.process.wait(timeout=15)
    restarted_ns = time.time_ns()
    collector.start()
    wait_tcp(collector.port)
    wait_for(lambda: (collector.availability() or {}).get("judged_ns", 0) > restarted_ns, 10, "a pass after the restart")
    after = collector.availability()
    assert after is not None and after["judged_ns"] < restarted_ns + WINDOW_SECONDS * 10**9, after
    assert after["status"] == "ok" and after["windows"][0]["value"] == 1.0, json.dumps(after)

    # the fault: the target stops answering, so availability falls below edge_local's 99.9 % floor
    faulted_ns = time.time_ns()
    responder.process.send_signal(signal.SIGTERM)
    responder.process.wait(timeout=10)
    wait_for(lambda: (collector.availability() or {}).get("status") == "breach", 20, "availability breach")
    breach = collector.availability()
    assert breach is not None and breach["since_ns"] > faulted_ns and breach["windows"][0]["value"] < 0.999, breach
    assert breach_samples(collector.metrics())["edge_local/availability"] == 1.0

    # victoria-metrics holds the same results: successes before the fault, failures after it
    store.settle()
    points = store.samples('{__name__="qiancheng_result_success", target="edge-echo"}')
    [(series, values)] = points.items()
    assert dict(series)["probe"] == "p-sla" and dict(series)["kind"] == "tcp"
    assert any(v == 1.0 and t * 10**6 < faulted_ns for t, v in values)
    assert any(v == 0.0 and t * 10**6 > faulted_ns for t, v in values)
    assert sum(1 for _, v in values if v == 0.0) >= 1 and len(values) >= ok["windows"][0]["results"]
