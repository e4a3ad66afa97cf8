"""Metric families built from a known set of results, on a fresh registry each time."""

from __future__ import annotations

import random
import shutil
import subprocess

import msgspec
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from qiancheng.collector.live import LABELS, Histogram, LiveState
from qiancheng.collector.metrics import (
    FIGURE_COUNTERS,
    FIGURE_GAUGES,
    HELP,
    RTT_BUCKETS,
    build_registry,
    new_live_state,
)
from qiancheng.collector.store import ProbeRecord, StoredResult
from qiancheng.core.result import Result, Target
from qiancheng.core.stats import train_stats
from tests.integration.helpers import require_tool

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


# ---- issue 5 figures: throughput and loaded latency, STAMP, voice estimate, CDN cache status ------------

CDN_URL = Target(name="cdn-object", address="https://cdn.example/seg.ts", target_class="cdn")
STAMP_TARGET = Target(name="stamp-edge", address="198.18.0.20:8620", target_class="edge")


def throughput(kind: str, seq: int, bits: float) -> Result:
    return Result(
        kind=kind, target=CDN_URL, start_ns=T0 + seq * S, duration_seconds=12.0, success=True, seq=seq,
        figures={"throughput_bits_per_second": bits, "throughput_p90_bits_per_second": bits * 1.1,
                 "bytes": bits * 10 / 8, "tcp_retransmits": 17.0, "idle_rtt_seconds": 0.004,
                 "loaded_rtt_seconds": 0.154, "bufferbloat_seconds": 0.150, "responsiveness_rpm": 390.0},
    )  # fmt: skip


def stamp(seq: int, reordered: float) -> Result:
    figures = train_stats([0.010, 0.012, 0.011]).figures() | {
        "reordered": reordered, "forward_delay_median_seconds": 0.006, "backward_delay_median_seconds": 0.005,
        "clock_error_seconds": 0.0002, "mos": 4.38, "r_factor": 91.9,
    }  # fmt: skip
    return Result(kind="stamp", target=STAMP_TARGET, start_ns=T0 + seq * S, duration_seconds=0.5, success=True,
                  figures=figures, samples=[0.010, 0.012, 0.011], seq=seq)  # fmt: skip


def cdn_http(seq: int, start_ns: int, info: dict[str, str], figures: dict[str, float]) -> Result:
    return Result(kind="http", target=CDN_URL, start_ns=start_ns, duration_seconds=0.05, success=True, seq=seq,
                  figures={"total_seconds": 0.05, "status_code": 200.0} | figures, info=info)  # fmt: skip


def test_throughput_and_loaded_latency_by_direction() -> None:
    state = new_live_state()
    state.apply("p1", "lishui", "ct", [throughput("download", 1, 940e6), throughput("upload", 2, 95e6)], T0)
    registry = registry_with(state)
    down, up = labels(CDN_URL, "download"), labels(CDN_URL, "upload")
    assert value(registry, "qiancheng_throughput_bits_per_second", **down, direction="download") == 940e6
    assert value(registry, "qiancheng_throughput_bits_per_second", **up, direction="upload") == 95e6
    assert value(registry, "qiancheng_throughput_bits_per_second", **up, direction="download") is None
    assert value(registry, "qiancheng_throughput_p90_bits_per_second", **up, direction="upload") == pytest.approx(104.5e6)
    assert value(registry, "qiancheng_throughput_bytes", **down, direction="download") == 940e6 * 10 / 8
    assert value(registry, "qiancheng_throughput_retransmits", **up, direction="upload") == 17
    assert value(registry, "qiancheng_idle_rtt_seconds", **down, direction="download") == 0.004
    assert value(registry, "qiancheng_loaded_rtt_seconds", **down, direction="download") == 0.154
    assert value(registry, "qiancheng_bufferbloat_seconds", **up, direction="upload") == 0.150
    assert value(registry, "qiancheng_responsiveness_rpm", **up, direction="upload") == 390
    # an HTTP test's `bytes` is the HTTP body metric, never a throughput figure
    state.apply("p1", "lishui", "ct", [cdn_http(3, T0, {}, {"bytes": 5.0})], T0)
    assert value(registry_with(state), "qiancheng_throughput_bytes", **labels(CDN_URL, "http"), direction="download") is None


def test_stamp_one_way_delays_clock_error_reordering_and_voice() -> None:
    state = new_live_state()
    state.apply("p1", "lishui", "ct", [stamp(1, 2.0), stamp(2, 1.0)], T0)
    registry = registry_with(state)
    st = labels(STAMP_TARGET, "stamp")
    assert value(registry, "qiancheng_one_way_delay_seconds", **st, direction="forward") == 0.006
    assert value(registry, "qiancheng_one_way_delay_seconds", **st, direction="backward") == 0.005
    assert value(registry, "qiancheng_clock_error_seconds", **st) == 0.0002
    assert value(registry, "qiancheng_packets_reordered_total", **st) == 3  # summed over both tests
    assert value(registry, "qiancheng_mos_estimate", **st) == 4.38
    assert value(registry, "qiancheng_r_factor_estimate", **st) == 91.9
    assert value(registry, "qiancheng_rtt_seconds_count", **st) == 6


def test_voice_estimate_of_icmp_only_where_the_contract_puts_it() -> None:
    voice = {"mos": 4.39, "r_factor": 92.4}
    state = new_live_state()
    state.apply("p1", "lishui", "ct", [with_figures(train("icmp", 1, T0, [0.02, 0.021]), voice),
                                       with_figures(train("tcp", 2, T0, [0.02, 0.021]), voice)], T0)  # fmt: skip
    registry = registry_with(state)
    assert value(registry, "qiancheng_mos_estimate", **labels(EDGE, "icmp")) == 4.39
    assert value(registry, "qiancheng_r_factor_estimate", **labels(EDGE, "icmp")) == 92.4
    assert value(registry, "qiancheng_mos_estimate", **labels(EDGE, "tcp")) is None


def test_cdn_cache_figures_and_the_info_labels_of_the_latest_test_carrying_them() -> None:
    state = new_live_state()
    hit = cdn_http(1, T0, {"cache_status": "hit", "cache_header": "x-cache", "edge": "cache-hkg17927-HKG"},
                   {"cdn_cache_hit": 1.0, "cdn_age_seconds": 12.0})  # fmt: skip
    state.apply("p1", "lishui", "ct", [hit], T0)
    series = labels(CDN_URL, "http")
    registry = registry_with(state)
    assert value(registry, "qiancheng_cdn_cache_hit", **series) == 1
    assert value(registry, "qiancheng_cdn_age_seconds", **series) == 12
    assert value(registry, "qiancheng_cdn_info", **series, cache_status="hit", edge="cache-hkg17927-HKG") == 1

    # a newer test without cache headers keeps the last known edge; a miss from another edge replaces it
    state.apply("p1", "lishui", "ct", [cdn_http(2, T0 + S, {}, {})], T0 + S)
    assert value(registry_with(state), "qiancheng_cdn_info", **series, cache_status="hit", edge="cache-hkg17927-HKG") == 1
    assert value(registry_with(state), "qiancheng_cdn_cache_hit", **series) is None  # gauges follow the latest test
    miss = cdn_http(3, T0 + 2 * S, {"cache_status": "miss", "cache_header": "x-cache", "edge": "cache-pek-1-PEK"},
                    {"cdn_cache_hit": 0.0})  # fmt: skip
    state.apply("p1", "lishui", "ct", [miss], T0 + 2 * S)
    # a late, older result replayed from a spool changes nothing
    state.apply("p1", "lishui", "ct", [cdn_http(4, T0 - S, {"cache_status": "stale", "edge": "old"}, {})], T0 + 3 * S)
    text = generate_latest(registry_with(state)).decode()
    info = [s for f in text_string_to_metric_families(text) if f.name == "qiancheng_cdn_info" for s in f.samples]
    assert [(s.labels["cache_status"], s.labels["edge"], s.value) for s in info] == [("miss", "cache-pek-1-PEK", 1.0)]
    assert value(registry_with(state), "qiancheng_cdn_cache_hit", **series) == 0


def test_info_without_edge_is_an_empty_label_and_other_kinds_never_show() -> None:
    state = new_live_state()
    state.apply("p1", "lishui", "ct", [cdn_http(1, T0, {"cache_status": "hit", "cache_header": "age"}, {})], T0)
    dns = Result(kind="dns", target=RESOLVER, start_ns=T0, duration_seconds=0.01, success=True, seq=2,
                 figures={"lookup_seconds": 0.01}, info={"cache_status": "hit"})  # fmt: skip
    state.apply("p1", "lishui", "ct", [dns], T0)
    registry = registry_with(state)
    assert value(registry, "qiancheng_cdn_info", **labels(CDN_URL, "http"), cache_status="hit", edge="") == 1
    assert value(registry, "qiancheng_cdn_info", **labels(RESOLVER, "dns"), cache_status="hit", edge="") is None


def test_issue5_families_have_help_and_pass_promtool() -> None:
    state = new_live_state()
    hit = cdn_http(5, T0, {"cache_status": "hit", "edge": "FRA56-P1"}, {"cdn_cache_hit": 1.0, "cdn_age_seconds": 3.0})
    state.apply("p1", "lishui", "ct", [throughput("download", 1, 9e8), throughput("upload", 2, 9e7), stamp(3, 1.0),
                                       with_figures(train("icmp", 4, T0, [0.01]), {"mos": 4.4, "r_factor": 93.0}),
                                       hit], T0)  # fmt: skip
    text = generate_latest(registry_with(state)).decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    expected = {
        "qiancheng_throughput_p90_bits_per_second", "qiancheng_throughput_bytes", "qiancheng_throughput_retransmits",
        "qiancheng_idle_rtt_seconds", "qiancheng_loaded_rtt_seconds", "qiancheng_bufferbloat_seconds",
        "qiancheng_responsiveness_rpm", "qiancheng_one_way_delay_seconds", "qiancheng_clock_error_seconds",
        "qiancheng_packets_reordered", "qiancheng_mos_estimate", "qiancheng_r_factor_estimate",
        "qiancheng_cdn_cache_hit", "qiancheng_cdn_age_seconds", "qiancheng_cdn_info",
    }  # fmt: skip
    assert expected <= set(families)
    assert all(families[name].documentation and families[name].samples for name in expected)
    assert families["qiancheng_packets_reordered"].type == "counter"
    lint = subprocess.run([require_tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                          check=False)  # fmt: skip
    # The throughput names are fixed by DESIGN.md in bit/s, which promtool's lint would have in bytes: that one
    # style remark about those two names is the only one allowed (exit 3 is "lint problems", 1 a parse error).
    problems = set((lint.stdout + lint.stderr).splitlines())
    contract_names = {f'{name} use base unit "bytes" instead of "bits"' for name in
                      ("qiancheng_throughput_bits_per_second", "qiancheng_throughput_p90_bits_per_second")}  # fmt: skip
    assert lint.returncode in (0, 3) and problems <= contract_names, lint.stdout + lint.stderr


def with_figures(result: Result, figures: dict[str, float]) -> Result:
    return msgspec.structs.replace(result, figures=result.figures | figures)


def test_restore_rebuilds_cdn_info_from_the_latest_stored_result() -> None:
    state = new_live_state()
    hit = cdn_http(7, T0, {"cache_status": "hit", "edge": "NRT57-C1"}, {"cdn_cache_hit": 1.0})
    state.restore([StoredResult("p1", "lishui", "ct", T0, hit)], [], allowed={"p1"})
    registry = registry_with(state)
    assert value(registry, "qiancheng_cdn_info", **labels(CDN_URL, "http"), cache_status="hit", edge="NRT57-C1") == 1
    assert value(registry, "qiancheng_cdn_cache_hit", **labels(CDN_URL, "http")) == 1


def test_samples_bucketed_in_bulk_equal_samples_bucketed_one_by_one() -> None:
    bounds = (0.001, 0.002, 0.005, 0.01)
    rng = random.Random(7)
    # lists of ten samples, one lost in each, some on a bound exactly (`le`: counted in that bucket)
    lists = [[None, *(rng.choice([0.001, 0.002, rng.uniform(0, 0.02)]) for _ in range(9))] for _ in range(1000)]
    bulk, one_by_one = Histogram.empty(bounds), Histogram.empty(bounds)
    for at in range(0, len(lists), 7):
        bulk.observe_lists(lists[at : at + 7])
        assert len(bulk._pending) < Histogram.FOLD_AT, "bucketed once FOLD_AT values wait"
    for values in lists:
        for value in values:
            if value is not None:
                one_by_one.observe(value)
    assert bulk._pending, "some values still wait: reading must bucket them"
    assert bulk.counts == one_by_one.counts and bulk.count == one_by_one.count == 9000
    assert bulk.total == pytest.approx(one_by_one.total, rel=1e-12) and not bulk._pending
    assert bulk.cumulative()[-1] == 9000
