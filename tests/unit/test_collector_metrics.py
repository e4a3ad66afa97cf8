"""Metric families built from a known set of results, on a fresh registry each time."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from qiancheng.collector.live import LABELS, LiveState
from qiancheng.collector.metrics import FIGURE_COUNTERS, FIGURE_GAUGES, HELP, RTT_BUCKETS, build_registry, new_live_state
from qiancheng.collector.store import ProbeRecord, StoredResult
from qiancheng.probes.result import Result, Target
from qiancheng.probes.stats import train_stats

T0 = 1_790_000_000_000_000_000
S = 1_000_000_000
EDGE = Target(name="edge", address="198.18.0.10", target_class="edge")
POOL = Target(name="pool-web", address="https://pool.example/ping", target_class="cloud_pool")
RESOLVER = Target(name="resolver", address="198.18.0.53", target_class="dns")


def labels(target: Target, kind: str, probe: str = "p1") -> dict[str, str]:
    return dict(zip(LABELS, (probe, "lishui", "ct", target.name, target.target_class, kind)))


def train(kind: str, seq: int, start_ns: int, samples: list[float | None]) -> Result:
    return Result(kind=kind, target=EDGE, start_ns=start_ns, duration_seconds=0.5, success=any(samples),
                  error=None if any(samples) else "loss", figures=train_stats(samples).figures(),
                  samples=samples, seq=seq)  # fmt: skip


HTTP = Result(
    kind="http", target=POOL, start_ns=T0, duration_seconds=0.09, success=True, seq=20,
    figures={"dns_seconds": 0.001, "connect_seconds": 0.004, "tls_seconds": 0.012, "ttfb_seconds": 0.05,
             "total_seconds": 0.09, "status_code": 200.0, "bytes": 5120.0},
)  # fmt: skip
DNS_FAIL = Result(
    kind="dns", target=RESOLVER, start_ns=T0, duration_seconds=2.0, success=False, error="timeout", seq=21,
    figures={"lookup_seconds": 2.0},
)  # fmt: skip


def registry_with(state: LiveState, now_ns: int = T0 + 10 * S) -> CollectorRegistry:
    return build_registry(state, clock=lambda: now_ns, process=False)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_every_sample_of_icmp_and_tcp_feeds_the_rtt_histogram() -> None:
    state = new_live_state()
    state.apply("p1", "lishui", "ct", [train("icmp", 1, T0, [0.0004, 0.003, None, 0.003, 2.5])], T0)
    state.apply("p1", "lishui", "ct", [train("icmp", 2, T0 + S, [0.0009])], T0 + S)
    registry = registry_with(state)
    icmp = labels(EDGE, "icmp")
    assert value(registry, "qiancheng_rtt_seconds_count", **icmp) == 5  # the lost packet is not a sample
    assert value(registry, "qiancheng_rtt_seconds_sum", **icmp) == pytest.approx(0.0004 + 0.003 * 2 + 2.5 + 0.0009)
    assert value(registry, "qiancheng_rtt_seconds_bucket", **icmp, le="0.0005") == 1
    assert value(registry, "qiancheng_rtt_seconds_bucket", **icmp, le="0.001") == 2
    assert value(registry, "qiancheng_rtt_seconds_bucket", **icmp, le="0.003") == 4  # `le`: 3 ms counts in 3 ms
    assert value(registry, "qiancheng_rtt_seconds_bucket", **icmp, le="2.0") == 4
    assert value(registry, "qiancheng_rtt_seconds_bucket", **icmp, le="+Inf") == 5
    assert RTT_BUCKETS[0] == 0.0005 and RTT_BUCKETS[-1] == 2.0


def test_packet_counters_sum_and_gauges_show_the_latest() -> None:
    state = new_live_state()
    state.apply("p1", "lishui", "ct", [train("tcp", 1, T0, [0.001, None, 0.002, 0.003])], T0)
    state.apply("p1", "lishui", "ct", [train("tcp", 2, T0 + S, [0.001, 0.001])], T0 + S)
    registry = registry_with(state)
    tcp = labels(EDGE, "tcp")
    assert value(registry, "qiancheng_packets_sent_total", **tcp) == 6
    assert value(registry, "qiancheng_packets_received_total", **tcp) == 5
    assert value(registry, "qiancheng_loss_ratio", **tcp) == 0.0  # the latest test lost nothing
    assert value(registry, "qiancheng_jitter_seconds", **tcp) == 0.0
    assert value(registry, "qiancheng_test_rtt_seconds", **tcp, statistic="median") == 0.001
    assert value(registry, "qiancheng_test_success", **tcp) == 1
    assert value(registry, "qiancheng_test_timestamp_seconds", **tcp) == pytest.approx((T0 + S) / 1e9)
    assert value(registry, "qiancheng_tests_total", **tcp, outcome="success", reason="none") == 2


def test_a_late_result_counts_but_does_not_replace_the_newer_gauges() -> None:
    state = new_live_state()
    state.apply("p1", "lishui", "ct", [train("icmp", 9, T0 + 60 * S, [0.020])], T0 + 60 * S)
    state.apply("p1", "lishui", "ct", [train("icmp", 3, T0, [None, None])], T0 + 61 * S)  # replayed from a spool
    registry = registry_with(state)
    icmp = labels(EDGE, "icmp")
    assert value(registry, "qiancheng_loss_ratio", **icmp) == 0.0
    assert value(registry, "qiancheng_test_success", **icmp) == 1
    assert value(registry, "qiancheng_packets_sent_total", **icmp) == 3
    assert value(registry, "qiancheng_tests_total", **icmp, outcome="failure", reason="loss") == 1


def test_http_phases_dns_and_failures() -> None:
    state = new_live_state()
    state.apply("p1", "lishui", "ct", [HTTP, DNS_FAIL], T0)
    registry = registry_with(state)
    http, dns = labels(POOL, "http"), labels(RESOLVER, "dns")
    for phase, seconds in (("dns", 0.001), ("connect", 0.004), ("tls", 0.012), ("ttfb", 0.05), ("total", 0.09)):
        assert value(registry, "qiancheng_http_phase_seconds", **http, phase=phase) == seconds
    assert value(registry, "qiancheng_http_status_code", **http) == 200
    assert value(registry, "qiancheng_dns_lookup_seconds", **dns) == 2.0
    assert value(registry, "qiancheng_test_success", **dns) == 0
    assert value(registry, "qiancheng_tests_total", **dns, outcome="failure", reason="timeout") == 1
    # kinds without RTT samples have no histogram and no packet counters
    assert value(registry, "qiancheng_rtt_seconds_count", **http) is None
    assert value(registry, "qiancheng_packets_sent_total", **dns) is None


def test_probe_liveness_spool_stats_and_ingest_accounting() -> None:
    state = new_live_state()
    state.saw_probe("p1", "lishui", "ct", {"site": "olt-3", "probe": "clash"}, {"spool_backlog": 4.0,
                    "spool_dropped_total": 2.0}, T0)  # fmt: skip
    state.count_request(200)
    state.count_request(401)
    state.count_batch("stored")
    state.count_results("stored", 7)
    state.count_batch("rejected", 3)
    state.observe_commit(0.002)
    registry = registry_with(state)
    probe = {"probe": "p1", "city": "lishui", "isp": "ct"}
    assert value(registry, "qiancheng_probe_last_seen_timestamp_seconds", **probe) == T0 / 1e9
    assert value(registry, "qiancheng_probe_spool_backlog", **probe) == 4
    assert value(registry, "qiancheng_probe_spool_dropped_total", **probe) == 2
    assert value(registry, "qiancheng_probe_info", **probe, site="olt-3") == 1  # a free label never overrides `probe`
    assert value(registry, "qiancheng_ingest_requests_total", code="401") == 1
    assert value(registry, "qiancheng_ingest_batches_total", outcome="rejected") == 1
    assert value(registry, "qiancheng_ingest_batches_total", outcome="duplicate") == 0  # present from the start
    assert value(registry, "qiancheng_ingest_results_total", outcome="stored") == 7
    assert value(registry, "qiancheng_ingest_results_total", outcome="rejected") == 3
    assert value(registry, "qiancheng_ingest_results_total", outcome="conflict") == 0  # present from the start
    assert value(registry, "qiancheng_ingest_commit_seconds_count") == 1


def test_restore_rebuilds_gauges_of_configured_probes_only() -> None:
    state = new_live_state()
    stored = [StoredResult("p1", "lishui", "ct", T0, HTTP), StoredResult("gone", "x", "y", T0, HTTP)]
    probes = [ProbeRecord("p1", "lishui", "ct", {}, {"spool_backlog": 0.0}, T0, 3, 9)]
    state.restore(stored, probes, allowed={"p1"})
    registry = registry_with(state)
    assert value(registry, "qiancheng_http_phase_seconds", **labels(POOL, "http"), phase="ttfb") == 0.05
    assert value(registry, "qiancheng_http_phase_seconds", **labels(POOL, "http", probe="gone"), phase="ttfb") is None
    assert value(registry, "qiancheng_probe_last_seen_timestamp_seconds", probe="p1", city="lishui", isp="ct") == T0 / 1e9
    assert value(registry, "qiancheng_tests_total", **labels(POOL, "http"), outcome="success", reason="none") is None


def test_series_silent_longer_than_the_ttl_leave_the_exposition() -> None:
    state = new_live_state(series_ttl_seconds=60)
    state.apply("p1", "lishui", "ct", [HTTP], T0)
    assert value(registry_with(state, now_ns=T0 + 59 * S), "qiancheng_test_success", **labels(POOL, "http")) == 1
    assert value(registry_with(state, now_ns=T0 + 61 * S), "qiancheng_test_success", **labels(POOL, "http")) is None
    assert state.series == {}


def test_every_family_has_help_and_exposition_round_trips() -> None:
    state = new_live_state()
    state.apply("p1", "lishui", "ct", [train("icmp", 1, T0, [0.01, 0.02]), HTTP, DNS_FAIL], T0)
    state.saw_probe("p1", "lishui", "ct", {}, {"spool_backlog": 0.0}, T0)
    text = generate_latest(registry_with(state)).decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for row in FIGURE_GAUGES + FIGURE_COUNTERS:
        assert row.metric in HELP
    for name, family in families.items():
        assert name.startswith("qiancheng_") and family.documentation
    assert families["qiancheng_packets_sent"].type == "counter"
    assert families["qiancheng_rtt_seconds"].type == "histogram"
    promtool = shutil.which("promtool")
    if promtool:
        lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
        assert lint.returncode == 0, lint.stdout + lint.stderr
