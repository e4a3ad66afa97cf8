"""Collectors sharded by city: each city's probe pushes to its own collector (its config names it), both
collectors write to one InfluxDB-API store and are scraped by one Prometheus. The city scorecard sees
both cities, each from exactly one collector, and the store and Prometheus agree on every packet."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict
from pathlib import Path

from dashboards.queries import dashboard_files, expand, load
from qiancheng.probes.spool import Spool
from tests.conftest import PYTHON, Processes
from tests.integration.helpers import Responder, probe_config, wait_for
from tests.integration.timeseries import InfluxCollector, Prometheus, VictoriaMetrics, city_targets

SHARDS = {"lishui": "p-lishui", "qiandongnan": "p-qiandongnan"}  # city → its probe


def _acknowledged(path: Path) -> int:
    """Results the collector acknowledged to this probe; the rest (at most a couple the stop's flush could
    not deliver on a busy machine) wait in its spool, none dropped."""

    async def read() -> int:
        spool = Spool(str(path), max_bytes=1 << 30)
        try:
            counters = await spool.counters()
            assert counters.acked_total + counters.backlog == counters.measured_total and counters.backlog <= 2
            return counters.acked_total
        finally:
            spool.close()

    return asyncio.run(read())


def test_two_collectors_by_city_one_store_one_prometheus(processes: Processes, tmp_path: Path) -> None:
    store = VictoriaMetrics(processes, tmp_path)
    store.start()
    responder = Responder(processes)
    responder.start()
    collectors = {
        city: InfluxCollector(processes, tmp_path, tokens={probe: f"token-{probe}-0001"}, influx_url=store.url,
                              name=f"collector-{city}")  # fmt: skip
        for city, probe in SHARDS.items()
    }
    for collector in collectors.values():
        collector.start()
    prometheus = Prometheus(processes, tmp_path, targets=[f"127.0.0.1:{c.port}" for c in collectors.values()])
    prometheus.start()
    probes = {}
    for city, probe_id in SHARDS.items():
        collector = collectors[city]
        config = probe_config(tmp_path / f"{probe_id}.yaml", probe_id, collector.tokens[probe_id], collector,
                              city_targets(responder), city=city)  # fmt: skip
        probes[probe_id] = processes.start(PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(config), name=probe_id)
    wait_for(lambda: len(prometheus.query("rate(qiancheng_rtt_seconds_count[4s]) > 0")) >= 8, 40,
             "RTT rates from both cities", step=0.5)  # fmt: skip
    time.sleep(3)

    # the scorecard's RTT and loss columns: one row per city, both cities
    scorecard = load(next(p for p in dashboard_files() if p.name == "qiancheng-city-scorecard.json"))
    [table] = [panel for panel in scorecard["panels"] if panel["title"].startswith("Scorecard")]
    for target in table["targets"][:9]:
        result = prometheus.query(expand(target["expr"], 60, 2, scrape_seconds=1.0))
        assert sorted(s["metric"]["city"] for s in result) == sorted(SHARDS), target["expr"]
    # each city from exactly one collector, each series once
    instances = prometheus.query("count by (city, instance) (qiancheng_test_success)")
    by_city = {s["metric"]["city"]: s["metric"]["instance"] for s in instances}
    assert by_city == {city: f"127.0.0.1:{collectors[city].port}" for city in SHARDS} and len(instances) == 2
    assert not prometheus.query("count by (city, probe, target, kind) (qiancheng_test_success) > 1")

    for process in probes.values():
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    acknowledged = {probe_id: _acknowledged(tmp_path / f"{probe_id}-spool.db") for probe_id in SHARDS.values()}
    time.sleep(2.5)  # the last batches scraped

    # the store: every result of each probe exactly once (seq from first to last, no repeat)
    store.settle()
    seqs: dict[str, list[int]] = defaultdict(list)
    for series, points in store.samples('{__name__="qiancheng_result_seq"}').items():
        labels = dict(series)
        assert labels["city"] == next(c for c, p in SHARDS.items() if p == labels["probe"])
        seqs[labels["probe"]] += [int(v) for _, v in points]
    for probe, numbers in seqs.items():
        numbers.sort()
        assert numbers == list(range(numbers[0], numbers[0] + acknowledged[probe])), probe
    assert set(seqs) == set(SHARDS.values())

    # the store and Prometheus count the same packets per city: nothing doubled on either side
    sent_in_store: dict[str, float] = defaultdict(float)
    for series, points in store.samples('{__name__="qiancheng_result_packets_sent"}').items():
        sent_in_store[dict(series)["city"]] += sum(v for _, v in points)
    sent_in_prometheus = {s["metric"]["city"]: float(s["value"][1])
                          for s in prometheus.query("sum by (city) (qiancheng_packets_sent_total)")}  # fmt: skip
    assert sent_in_prometheus == dict(sent_in_store) and all(v > 0 for v in sent_in_store.values())
