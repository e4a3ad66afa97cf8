"""The InfluxDB store against a real server that speaks its write API (victoria-metrics on loopback).

Results are read back through the server's own query API (export of raw samples). VictoriaMetrics
keeps a sample written twice as two samples, so "not doubled" is checked on raw data.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from qiancheng.core.result import Result, Target
from qiancheng.core.wire import Batch, encode_batch
from qiancheng.probes.spool import Spool
from tests.conftest import PYTHON, Processes
from tests.integration.helpers import Responder, probe_config, wait_for
from tests.integration.timeseries import InfluxCollector, VictoriaMetrics

NOW_NS = time.time_ns()
HOUR_NS = 3600 * 10**9


def _post(url: str, token: str, batch: Batch) -> tuple[int, dict[str, str], dict[str, object]]:
    request = urllib.request.Request(
        url + "/api/v1/results", data=encode_batch(batch), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def _icmp(seq: int, start_ns: int, median: float) -> Result:
    return Result(
        kind="icmp", target=Target(name="edge-1", address="198.18.0.1", target_class="edge"), start_ns=start_ns,
        duration_seconds=0.25, success=True, seq=seq,
        figures={"packets_sent": 5.0, "packets_received": 5.0, "loss_ratio": 0.0, "rtt_median_seconds": median},
    )  # fmt: skip


def _tcp_failed(seq: int, start_ns: int) -> Result:
    return Result(
        kind="tcp", target=Target(name="pool-1", address="198.18.0.2:443", target_class="cloud_pool"),
        start_ns=start_ns, duration_seconds=1.5, success=False, error="timeout", seq=seq,
        figures={"packets_sent": 3.0, "packets_received": 0.0, "loss_ratio": 1.0},
    )  # fmt: skip


def test_batches_land_once_with_their_true_times_and_values(processes: Processes, tmp_path: Path) -> None:
    store = VictoriaMetrics(processes, tmp_path)
    store.start()
    collector = InfluxCollector(processes, tmp_path, tokens={"p-lishui": "token-lishui-0001"}, influx_url=store.url)
    collector.start()
    late = NOW_NS - 30 * HOUR_NS  # measured yesterday, replayed today: lands yesterday
    first = Batch(
        probe_id="p-lishui", batch_id="batch-0001", city="Lishui, Zhejiang", isp="ct", stats={"spool_backlog": 7.0},
        results=[_icmp(101, NOW_NS - 2 * 10**9, 0.0042), _tcp_failed(102, NOW_NS - 10**9), _icmp(103, late, 0.0125)],
    )  # fmt: skip
    status, _, ack = _post(collector.url, "token-lishui-0001", first)
    assert (status, ack) == (200, {"accepted": 3, "duplicate": False, "stored": 3})
    status, _, ack = _post(collector.url, "token-lishui-0001", first)  # the ack was lost: the probe retries
    assert (status, ack) == (200, {"accepted": 3, "duplicate": True, "stored": 0})
    # a result re-sent inside another batch is not written again; the new one is
    second = Batch(probe_id="p-lishui", batch_id="batch-0002", city="Lishui, Zhejiang", isp="ct",
                   results=[first.results[0], _icmp(104, NOW_NS, 0.0031)])  # fmt: skip
    status, _, ack = _post(collector.url, "token-lishui-0001", second)
    assert (status, ack) == (200, {"accepted": 2, "duplicate": False, "stored": 1})

    store.settle()
    medians = store.samples('{__name__="qiancheng_result_rtt_median_seconds"}')
    [(series, points)] = medians.items()
    assert dict(series) == {
        "__name__": "qiancheng_result_rtt_median_seconds", "probe": "p-lishui", "city": "Lishui, Zhejiang",
        "isp": "ct", "target": "edge-1", "target_class": "edge", "kind": "icmp",
    }  # fmt: skip
    # the server keeps milliseconds; each point sits at its result's start time, exactly once
    assert points == [(late // 10**6, 0.0125), ((NOW_NS - 2 * 10**9) // 10**6, 0.0042), (NOW_NS // 10**6, 0.0031)]

    seqs = store.samples('{__name__="qiancheng_result_seq"}', drop=("target", "target_class", "kind"))
    assert sorted(v for points in seqs.values() for _, v in points) == [101, 102, 103, 104]

    failed = store.samples('{__name__=~"qiancheng_result_(success|loss_ratio|duration_seconds)", kind="tcp"}')
    by_name = {dict(series)["__name__"]: points for series, points in failed.items()}
    when = (NOW_NS - 10**9) // 10**6
    assert by_name == {
        "qiancheng_result_success": [(when, 0.0)],
        "qiancheng_result_loss_ratio": [(when, 1.0)],
        "qiancheng_result_duration_seconds": [(when, 1.5)],
    }
    assert {dict(s)["city"] for s in failed} == {"Lishui, Zhejiang"}  # a comma and a space in a tag survive

    backlog = store.samples('{__name__="qiancheng_probe_spool_backlog"}')
    assert [v for points in backlog.values() for _, v in points] == [7.0]  # one probe point per stored batch
    assert collector.latest()["totals"]["results"] == 4


def _spool_counts(path: Path) -> tuple[int, int, int]:
    """(measured, acknowledged by the collector, still waiting) of a probe's spool."""

    async def read() -> tuple[int, int, int]:
        spool = Spool(str(path), max_bytes=1 << 30)
        try:
            counters = await spool.counters()
            return counters.measured_total, counters.acked_total, counters.backlog
        finally:
            spool.close()

    return asyncio.run(read())


def _ingest_count(collector: InfluxCollector, code: str) -> float:
    for line in collector.metrics().splitlines():
        if line.startswith(f'qiancheng_ingest_requests_total{{code="{code}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_store_slow_or_down_gets_503_and_the_spool_delivers_everything_once(
    processes: Processes, tmp_path: Path
) -> None:
    store = VictoriaMetrics(processes, tmp_path)
    store.start()
    responder = Responder(processes)
    responder.start()
    tokens = {"p-qiandongnan": "token-qdn-000001", "p-manual": "token-manual-0001"}
    collector = InfluxCollector(processes, tmp_path, tokens=tokens, influx_url=store.url, timeout="1s")
    collector.start()
    targets = f"  - {{name: echo, address: '127.0.0.1:{responder.echo_port}', class: edge, kinds: [tcp]}}\n" \
              f"  - {{name: web, address: 'http://127.0.0.1:{responder.http_port}/ping', class: cdn, kinds: [http]}}\n"
    config = probe_config(tmp_path / "probe.yaml", "p-qiandongnan", tokens["p-qiandongnan"], collector, targets,
                          city="qiandongnan", interval="1s")  # fmt: skip
    probe = processes.start(PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(config), name="probe")
    wait_for(lambda: collector.latest()["totals"]["results"] >= 4, 20, "first results stored")

    # slow: the server hangs; writes time out after store.influx.timeout and the probe is told to retry
    store.pause()
    try:
        wait_for(lambda: _ingest_count(collector, "503") >= 1, 15, "a 503 while the store hangs")
        manual = Batch(probe_id="p-manual", batch_id="manual-0001", results=[_icmp(1, NOW_NS, 0.001)])
        status, headers, body = _post(collector.url, tokens["p-manual"], manual)
        assert status == 503 and headers["Retry-After"] == "5", (status, headers, body)
    finally:
        store.resume()
        resumed_ms = time.time_ns() // 10**6
    # down: connection refused; then the server comes back on the same data
    store.stop()
    status, headers, _ = _post(collector.url, tokens["p-manual"], manual)
    assert status == 503 and headers["Retry-After"] == "5"
    try:
        urllib.request.urlopen(collector.url + "/healthz", timeout=5)
        raise AssertionError("/healthz said ok while the store is down")
    except urllib.error.HTTPError as error:
        assert error.code == 503 and json.loads(error.read())["store_ok"] is False
    time.sleep(2)
    store.start()
    # the collector itself away for a while: the probe keeps measuring; its results come later, at their times
    collector.process.send_signal(signal.SIGTERM)
    collector.process.wait(timeout=15)
    outage_start_ms = time.time_ns() // 10**6
    time.sleep(3)
    outage_end_ms = time.time_ns() // 10**6
    collector.start()
    status, _, ack = _post(collector.url, tokens["p-manual"], manual)
    assert (status, ack["stored"]) == (200, 1)
    wait_for(lambda: _spool_counts(tmp_path / "p-qiandongnan-spool.db")[2] <= 2, 30, "the spool drained")
    probe.send_signal(signal.SIGTERM)
    assert probe.wait(timeout=10) == 0
    measured, acknowledged, backlog = _spool_counts(tmp_path / "p-qiandongnan-spool.db")
    # nothing dropped; what the stop's flush could not deliver on a busy machine waits in the spool
    assert acknowledged + backlog == measured and backlog <= 2

    store.settle()
    series = store.samples('{__name__="qiancheng_result_seq", probe="p-qiandongnan"}')
    assert {dict(s)["kind"] for s in series} == {"tcp", "http"}
    points = [point for per_series in series.values() for point in per_series]
    seqs = sorted({int(v) for _, v in points})
    assert seqs == list(range(seqs[0], seqs[0] + acknowledged)), "an acknowledged result is missing"
    # one point per result: a write that timed out may still have landed when the server woke up, and the
    # retry then wrote the same point again (InfluxDB overwrites it; this server keeps both samples), so a
    # repeated sample must be an exact copy: same series, same time, same seq
    distinct = {(s, t, v) for s, per_series in series.items() for t, v in per_series}
    assert len({(s, t) for s, t, _ in distinct}) == len(distinct) == acknowledged
    # and only results measured before the hung server woke up can have been written twice
    repeated = [key for key, count in Counter((s, t) for s, ps in series.items() for t, _ in ps).items() if count > 1]
    assert all(t <= resumed_ms for _, t in repeated), "a result written twice outside the hang"
    # results measured while the collector was down sit at their own times, not at the time they arrived
    during = [t for t, _ in points if outage_start_ms <= t <= outage_end_ms]
    assert len(during) >= 4, f"{len(during)} points measured during the collector outage"
    # values: the latest result the collector reports is what the server holds at that time
    for entry in collector.latest()["results"]:
        if entry["probe"] != "p-qiandongnan":
            continue
        result = entry["result"]
        for name, value in result["figures"].items():
            if name in ("seq", "success", "duration_seconds", "error"):
                continue
            found = store.samples(f'{{__name__="qiancheng_result_{name}", probe="p-qiandongnan", '
                                  f'target="{result["target"]["name"]}", kind="{result["kind"]}"}}')  # fmt: skip
            [(_, held)] = found.items()
            # the server keeps about 12 significant digits of a float
            assert math.isclose(dict(held)[result["start_ns"] // 10**6], value, rel_tol=1e-9), name


def test_collector_starts_while_the_store_is_down_and_stores_once_it_is_up(processes: Processes, tmp_path: Path) -> None:
    store = VictoriaMetrics(processes, tmp_path)  # its port is chosen, nothing listens there yet
    collector = InfluxCollector(processes, tmp_path, tokens={"p-lishui": "token-lishui-0001"}, influx_url=store.url)
    collector.start()
    batch = Batch(probe_id="p-lishui", batch_id="batch-early-01", city="lishui", results=[_icmp(7, NOW_NS, 0.002)])
    status, headers, body = _post(collector.url, "token-lishui-0001", batch)
    assert (status, headers["Retry-After"]) == (503, "5"), body
    try:
        urllib.request.urlopen(collector.url + "/healthz", timeout=5)
        raise AssertionError("/healthz said ok with no store")
    except urllib.error.HTTPError as error:
        assert error.code == 503
    store.start()
    status, _, ack = _post(collector.url, "token-lishui-0001", batch)
    assert (status, ack) == (200, {"accepted": 1, "duplicate": False, "stored": 1})
    store.settle()
    [(_, points)] = store.samples('{__name__="qiancheng_result_seq"}').items()
    assert points == [(NOW_NS // 10**6, 7.0)]
