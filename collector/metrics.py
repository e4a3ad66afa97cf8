"""Prometheus exposition of the live state: a custom collector whose collect() builds every family anew.

What a figure becomes is table-driven: adding a metric fed by a result figure is one line in
FIGURE_GAUGES or FIGURE_COUNTERS (and one HELP line for a new family). docs/metrics.md lists them all.
Gauges show the latest result by start time; counters and the RTT histogram count every result
stored for the first time. INFO_GAUGES turn `info` text into labels of a constant-1 gauge: the latest
result (by start time) of the series that carries any of the keys; one series per probe×target×kind,
whatever the values, so the labels cannot multiply series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from qiancheng.core.clock import wall_ns
from qiancheng.core.kinds import kinds_with
from qiancheng.core.result import Result

from .live import LABELS, PROBE_LABELS, Histogram, LiveState, Series
from .plan.freshness import PlanFreshness

__all__ = [
    "RTT_BUCKETS",
    "COMMIT_BUCKETS",
    "RTT_KINDS",
    "FigureMetric",
    "InfoMetric",
    "FIGURE_GAUGES",
    "FIGURE_COUNTERS",
    "INFO_GAUGES",
    "PROBE_STATS",
    "HELP",
    "HOP_GAUGES",
    "DEFAULT_HOP_SERIES",
    "new_live_state",
    "LiveCollector",
    "build_registry",
]

#: per-hop series of the latest paths /metrics shows by default (metrics.path_hop_series)
DEFAULT_HOP_SERIES: Final = 10_000
#: RTT buckets in seconds, 0.5 ms … 2 s: loopback and same-city edges sit in the first buckets, national
#: hubs at 20–60 ms, bad paths and bufferbloat in the hundreds of ms; beyond 2 s a probe's timeout bites
RTT_BUCKETS: Final = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
)  # fmt: skip
#: how long a batch's SQLite transaction takes, seconds (an fsync is 0.1–10 ms on SSDs)
COMMIT_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: kinds whose samples are round-trip times, each one observed in qiancheng_rtt_seconds
RTT_KINDS: Final = frozenset(kinds_with("round_trips"))
_TRAIN_KINDS: Final = RTT_KINDS


@dataclass(frozen=True, slots=True)
class FigureMetric:
    """A metric fed by one result figure, for the kinds given (None: any), with fixed extra labels, and
    only when the result's info says `when` (key, value), if given."""

    metric: str
    figure: str
    kinds: frozenset[str] | None = None
    extra: tuple[tuple[str, str], ...] = ()
    when: tuple[str, str] | None = None

    def shows(self, result: Result) -> float | None:
        """The figure this row shows of `result`, or None."""
        if self.when is not None and result.info.get(self.when[0]) != self.when[1]:
            return None
        return result.figures.get(self.figure)


@dataclass(frozen=True, slots=True)
class InfoMetric:
    """A constant-1 gauge labelled with info `keys` ("" when absent) of the series' latest result carrying them."""

    metric: str
    keys: tuple[str, ...]
    kinds: frozenset[str] | None = None


def _only(*kinds: str) -> frozenset[str]:
    return frozenset(kinds)


def _both_directions(metric: str, figure: str) -> tuple[FigureMetric, FigureMetric]:
    """The download and upload rows of a throughput-test metric, labelled `direction`."""
    return (
        FigureMetric(metric, figure, _only("download"), (("direction", "download"),)),
        FigureMetric(metric, figure, _only("upload"), (("direction", "upload"),)),
    )


def _capacity(metric: str, figure: str, *extra: tuple[str, str]) -> tuple[FigureMetric, FigureMetric]:
    """The download and upload rows of a capacity metric: one kind, the direction in its results' info."""
    def row(direction: str) -> FigureMetric:
        return FigureMetric(metric, figure, _CAPACITY_KINDS, (("direction", direction), *extra), ("direction", direction))

    return row("download"), row("upload")


_CAPACITY_KINDS: Final = frozenset(kinds_with("capacity"))
_CDN_KINDS: Final = frozenset(kinds_with("cdn"))
_PATH_KINDS: Final = frozenset(kinds_with("path"))
_VOICE_KINDS: Final = frozenset(kinds_with("voice"))


#: gauges from the latest result of each series
FIGURE_GAUGES: Final = (
    FigureMetric("qiancheng_loss_ratio", "loss_ratio", _TRAIN_KINDS),
    FigureMetric("qiancheng_jitter_seconds", "jitter_seconds", _TRAIN_KINDS),
    FigureMetric("qiancheng_pdv_p99_seconds", "pdv_p99_seconds", _TRAIN_KINDS),
    FigureMetric("qiancheng_test_rtt_seconds", "rtt_min_seconds", _TRAIN_KINDS, (("statistic", "min"),)),
    FigureMetric("qiancheng_test_rtt_seconds", "rtt_mean_seconds", _TRAIN_KINDS, (("statistic", "mean"),)),
    FigureMetric("qiancheng_test_rtt_seconds", "rtt_median_seconds", _TRAIN_KINDS, (("statistic", "median"),)),
    FigureMetric("qiancheng_test_rtt_seconds", "rtt_p95_seconds", _TRAIN_KINDS, (("statistic", "p95"),)),
    FigureMetric("qiancheng_test_rtt_seconds", "rtt_max_seconds", _TRAIN_KINDS, (("statistic", "max"),)),
    FigureMetric("qiancheng_test_rtt_seconds", "rtt_stddev_seconds", _TRAIN_KINDS, (("statistic", "stddev"),)),
    FigureMetric("qiancheng_http_phase_seconds", "dns_seconds", _only("http"), (("phase", "dns"),)),
    FigureMetric("qiancheng_http_phase_seconds", "connect_seconds", _only("http"), (("phase", "connect"),)),
    FigureMetric("qiancheng_http_phase_seconds", "tls_seconds", _only("http"), (("phase", "tls"),)),
    FigureMetric("qiancheng_http_phase_seconds", "ttfb_seconds", _only("http"), (("phase", "ttfb"),)),
    FigureMetric("qiancheng_http_phase_seconds", "total_seconds", _only("http"), (("phase", "total"),)),
    FigureMetric("qiancheng_http_status_code", "status_code", _only("http")),
    FigureMetric("qiancheng_http_response_bytes", "bytes", _only("http")),
    FigureMetric("qiancheng_dns_lookup_seconds", "lookup_seconds", _only("dns")),
    FigureMetric("qiancheng_dns_answers", "answer_count", _only("dns")),
    FigureMetric("qiancheng_dns_rcode", "rcode_value", _only("dns")),
    *_both_directions("qiancheng_throughput_bits_per_second", "throughput_bits_per_second"),
    *_both_directions("qiancheng_throughput_p90_bits_per_second", "throughput_p90_bits_per_second"),
    *_both_directions("qiancheng_throughput_bytes", "bytes"),
    *_both_directions("qiancheng_throughput_retransmits", "tcp_retransmits"),
    *_both_directions("qiancheng_idle_rtt_seconds", "idle_rtt_seconds"),
    *_both_directions("qiancheng_loaded_rtt_seconds", "loaded_rtt_seconds"),
    *_both_directions("qiancheng_bufferbloat_seconds", "bufferbloat_seconds"),
    *_both_directions("qiancheng_responsiveness_rpm", "responsiveness_rpm"),
    FigureMetric(
        "qiancheng_one_way_delay_seconds", "forward_delay_median_seconds", _only("stamp"), (("direction", "forward"),)
    ),
    FigureMetric(
        "qiancheng_one_way_delay_seconds", "backward_delay_median_seconds", _only("stamp"), (("direction", "backward"),)
    ),
    FigureMetric("qiancheng_clock_error_seconds", "clock_error_seconds", _only("stamp")),
    FigureMetric("qiancheng_mos_estimate", "mos", _VOICE_KINDS),
    FigureMetric("qiancheng_r_factor_estimate", "r_factor", _VOICE_KINDS),
    FigureMetric("qiancheng_cdn_cache_hit", "cdn_cache_hit", _CDN_KINDS),
    FigureMetric("qiancheng_cdn_age_seconds", "cdn_age_seconds", _CDN_KINDS),
    FigureMetric("qiancheng_path_hops", "hop_count", _PATH_KINDS),
    FigureMetric("qiancheng_path_destination_reached", "destination_reached", _PATH_KINDS),
    FigureMetric("qiancheng_path_rtt_seconds", "rtt_median_seconds", _PATH_KINDS),
    FigureMetric("qiancheng_path_loss_ratio", "loss_ratio", _PATH_KINDS),
    FigureMetric("qiancheng_path_rate_limited_hops", "rate_limited_hops", _PATH_KINDS),
    *_capacity("qiancheng_capacity_bits_per_second", "capacity_bits_per_second", ("layer", "ip")),
    *_capacity("qiancheng_capacity_bits_per_second", "capacity_ethernet_bits_per_second", ("layer", "ethernet")),
    *_capacity("qiancheng_capacity_loss_ratio", "loss_ratio"),
    *_capacity("qiancheng_capacity_rtt_variation_seconds", "rtt_variation_max_seconds"),
    *_capacity("qiancheng_capacity_delay_variation_seconds", "delay_variation_max_seconds"),
)  # fmt: skip

#: counters summing a figure over every result stored for the first time
FIGURE_COUNTERS: Final = (
    FigureMetric("qiancheng_packets_sent_total", "packets_sent", _TRAIN_KINDS),
    FigureMetric("qiancheng_packets_received_total", "packets_received", _TRAIN_KINDS),
    FigureMetric("qiancheng_packets_duplicate_total", "duplicates", _TRAIN_KINDS),
    FigureMetric("qiancheng_packets_late_total", "late", _TRAIN_KINDS),
    FigureMetric("qiancheng_packets_reordered_total", "reordered", _TRAIN_KINDS),
    FigureMetric("qiancheng_path_changes_total", "path_changes", _PATH_KINDS),
)

#: constant-1 gauges labelled with info keys of the latest result carrying them
INFO_GAUGES: Final = (
    InfoMetric("qiancheng_cdn_info", ("cache_status", "edge"), _CDN_KINDS),
    InfoMetric("qiancheng_path_info", ("fingerprint",), _PATH_KINDS),
)

#: per-hop gauges of the latest path of each path series (flow 0): (metric, Hop attribute)
HOP_GAUGES: Final = (
    ("qiancheng_path_hop_rtt_seconds", "rtt_median_seconds"),
    ("qiancheng_path_hop_loss_ratio", "loss_ratio"),
    ("qiancheng_path_hop_rate_limited", "rate_limited"),
)
#: labels of the per-hop gauges beyond the series' own
HOP_LABELS: Final = ("hop", "address")

#: per-probe metrics from a batch's `stats`: (metric, stat name, is a counter)
PROBE_STATS: Final = (
    ("qiancheng_probe_spool_backlog", "spool_backlog", False),
    ("qiancheng_probe_spool_backlog_bytes", "spool_backlog_bytes", False),
    ("qiancheng_probe_spool_dropped_total", "spool_dropped_total", True),
    ("qiancheng_probe_spool_rejected_total", "spool_rejected_total", True),
    ("qiancheng_probe_measured_total", "measured_total", True),
    ("qiancheng_probe_uptime_seconds", "uptime_seconds", False),
    ("qiancheng_probe_load1", "load1", False),
    ("qiancheng_probe_cpus", "cpus", False),
    ("qiancheng_probe_clock_synced", "clock_synced", False),
    ("qiancheng_probe_clock_maxerror_seconds", "clock_maxerror_seconds", False),
)

HELP: Final = {
    "qiancheng_rtt_seconds": "Every round-trip time sample (icmp echo, tcp connect, stamp), seconds.",
    "qiancheng_packets_sent_total": "Packets (or connects) sent in tests; loss = 1 - rate(received)/rate(sent).",
    "qiancheng_packets_received_total": "Packets (or connects) answered within the timeout.",
    "qiancheng_packets_duplicate_total": "Duplicate replies (never counted as received).",
    "qiancheng_packets_late_total": "Replies that arrived after the timeout (their packet counts as lost).",
    "qiancheng_tests_total": "Tests stored, by outcome (success, failure) and failure reason (none on success).",
    "qiancheng_test_success": "1 if the latest test (by start time) succeeded, else 0.",
    "qiancheng_test_duration_seconds": "How long the latest test took, seconds.",
    "qiancheng_test_timestamp_seconds": "When the latest test started, Unix seconds (UTC).",
    "qiancheng_loss_ratio": "Loss of the latest test, 0..1: packets with no reply within the timeout (RFC 7680).",
    "qiancheng_jitter_seconds": "Mean absolute delay variation of the latest test (RFC 3393 IPDV), seconds.",
    "qiancheng_pdv_p99_seconds": "99th percentile packet delay variation of the latest test (RFC 5481 PDV), seconds.",
    "qiancheng_test_rtt_seconds": "Round-trip statistic (min, mean, median, p95, max, stddev) of the latest test, seconds.",
    "qiancheng_http_phase_seconds": "Phase of the latest HTTP test (dns, connect, tls, ttfb, total), seconds.",
    "qiancheng_http_status_code": "HTTP status code of the latest HTTP test.",
    "qiancheng_http_response_bytes": "Body bytes received by the latest HTTP test.",
    "qiancheng_dns_lookup_seconds": "Lookup time of the latest DNS test, seconds.",
    "qiancheng_dns_answers": "Answer records in the latest DNS response.",
    "qiancheng_dns_rcode": "DNS response code (RFC 1035/6895 value) of the latest DNS test.",
    "qiancheng_throughput_bits_per_second": "Goodput of the latest download/upload test, bits per second.",
    "qiancheng_throughput_p90_bits_per_second": "90th percentile of the 100 ms goodput samples of the latest download/upload test, bits per second.",
    "qiancheng_throughput_bytes": "Bytes moved in the measured window of the latest download/upload test (warm-up excluded).",
    "qiancheng_throughput_retransmits": "TCP segments retransmitted by the sending end during the latest download/upload test.",
    "qiancheng_idle_rtt_seconds": "Median round trip on fresh connections before the load of the latest throughput test, seconds.",
    "qiancheng_loaded_rtt_seconds": "Median round trip on fresh connections during the load of the latest throughput test, seconds.",
    "qiancheng_bufferbloat_seconds": "Loaded minus idle round trip of the latest throughput test, seconds.",
    "qiancheng_responsiveness_rpm": "Round trips per minute under load of the latest throughput test (draft-ietf-ippm-responsiveness).",
    "qiancheng_one_way_delay_seconds": "Median one-way delay of the latest STAMP test (forward: sender to reflector, backward: back), seconds; see qiancheng_clock_error_seconds.",
    "qiancheng_clock_error_seconds": "Sum of both ends' clock error estimates of the latest STAMP test (RFC 8762), seconds: the one-way delays are uncertain by this much.",
    "qiancheng_packets_reordered_total": "Packets that arrived after one with a higher sequence number.",
    "qiancheng_mos_estimate": "Estimated voice MOS (1..4.5) of the latest test: ITU-T G.107 E-model, G.711 with PLC, from delay, jitter and loss.",
    "qiancheng_r_factor_estimate": "Estimated E-model transmission rating R of the latest test (ITU-T G.107; 93.2 on a perfect path).",
    "qiancheng_cdn_cache_hit": "1 if the latest response came from the CDN's cache, 0 for any other cache status the headers gave.",
    "qiancheng_cdn_age_seconds": "Age of the latest cached response (Age header), seconds.",
    "qiancheng_cdn_info": "Constant 1, labelled with the cache status and serving edge of the latest test that reported them.",
    "qiancheng_path_hops": "Hops to the destination in the latest path trace (to the last hop that answered when it was not reached).",
    "qiancheng_path_destination_reached": "1 if the latest path trace reached its destination, else 0.",
    "qiancheng_path_rtt_seconds": "Median round trip to the destination over the latest path trace, seconds.",
    "qiancheng_path_loss_ratio": "Share of the latest path trace's probes to the destination's TTL left unanswered: path loss, 0..1.",
    "qiancheng_path_rate_limited_hops": "Hops of the latest path trace whose missing replies do not persist beyond them (ICMP rate limiting, not loss).",
    "qiancheng_capacity_bits_per_second": "Maximum capacity of the latest capacity test in that direction (RFC 9097, found by RFC 9946's rate search), bits per second at the layer named: ip counts each datagram with its UDP and IP headers, ethernet adds an Ethernet header.",
    "qiancheng_capacity_loss_ratio": "Loss ratio of the latest capacity test's sub-interval of maximum capacity, in that direction.",
    "qiancheng_capacity_rtt_variation_seconds": "Largest round trip above the minimum in the latest capacity test's sub-interval of maximum capacity, seconds.",
    "qiancheng_capacity_delay_variation_seconds": "Largest one-way delay variation above the minimum in the latest capacity test's sub-interval of maximum capacity, seconds.",
    "qiancheng_path_changes_total": "Path traces whose hop list differed from the probe's previous trace of the target that reached it.",
    "qiancheng_path_info": "Constant 1, labelled with the fingerprint of the latest traced path.",
    "qiancheng_path_hop_rtt_seconds": "Median round trip to each hop (TTL, labelled hop, with its address) of the latest path trace, seconds.",
    "qiancheng_path_hop_loss_ratio": "Share of probes each hop of the latest path trace left unanswered, 0..1 (see qiancheng_path_hop_rate_limited).",
    "qiancheng_path_hop_rate_limited": "1 if the hop's missing replies do not persist to the hops beyond it: ICMP rate limiting, not path loss.",
    "qiancheng_path_hops_omitted": "Hops of latest path traces left out of the per-hop metrics by metrics.path_hop_series.",
    "qiancheng_probe_last_seen_timestamp_seconds": "When the collector last received a valid batch from the probe, Unix seconds.",
    "qiancheng_probe_spool_backlog": "Results waiting in the probe's spool when it sent its latest batch.",
    "qiancheng_probe_spool_backlog_bytes": "Bytes of results waiting in the probe's spool when it sent its latest batch.",
    "qiancheng_probe_spool_rejected_total": "Results the probe quarantined because the collector refused them (400/422), as the probe reports it.",
    "qiancheng_probe_spool_dropped_total": "Results the probe's full spool dropped (oldest first), as the probe reports it.",
    "qiancheng_probe_measured_total": "Tests the probe has measured, as the probe reports it.",
    "qiancheng_probe_uptime_seconds": "How long the probe's agent has been running, seconds, as its latest batch said.",
    "qiancheng_probe_load1": "The probe box's 1-minute load average, as its latest batch said.",
    "qiancheng_probe_cpus": "CPUs the probe may run on, as its latest batch said (compare load1 with it).",
    "qiancheng_probe_clock_synced": "1 if the probe box's kernel clock is synchronised (an NTP daemon disciplines it), else 0.",
    "qiancheng_probe_clock_maxerror_seconds": "The probe box's kernel bound on its clock's error, seconds (adjtimex maxerror).",
    "qiancheng_probe_plan_outdated_seconds": "0 if the probe runs the plan this collector would give it now, else seconds since it was first seen running another.",
    "qiancheng_probe_info": "Constant 1, labelled with the probe's software version, its plan version and its free labels from its latest batch.",
    "qiancheng_ingest_requests_total": "POST /api/v1/results requests by HTTP status code.",
    "qiancheng_ingest_batches_total": "Batches by outcome: stored, duplicate (batch_id seen before), rejected, rate_limited (429: sent again later).",
    "qiancheng_ingest_results_total": "Results by outcome: stored, duplicate (seq or batch seen before), conflict (seq reused with another start time: not stored), rejected, cardinality (a target past limits.max_targets_per_probe), rate_limited (429: sent again later).",
    "qiancheng_ingest_commit_seconds": "Time to commit one batch durably to the store, seconds.",
    "qiancheng_series": "Per-test series currently shown (probe x target x kind, with city, isp, class).",
}

_RESERVED_PROBE_LABELS: Final = frozenset(PROBE_LABELS + ("version", "plan"))


def _check_tables() -> None:
    """Every family has help, and rows of one family agree on their extra label names (import-time)."""
    names: dict[str, tuple[str, ...]] = {}
    for row in FIGURE_GAUGES + FIGURE_COUNTERS:
        assert row.metric in HELP, f"{row.metric} needs a HELP line"
        keys = tuple(k for k, _ in row.extra)
        assert names.setdefault(row.metric, keys) == keys, f"{row.metric}: rows disagree on labels"
    for metric, _, _ in PROBE_STATS:
        assert metric in HELP, f"{metric} needs a HELP line"
    for metric, _ in HOP_GAUGES:
        assert metric in HELP, f"{metric} needs a HELP line"
    for info in INFO_GAUGES:
        assert info.metric in HELP, f"{info.metric} needs a HELP line"
        assert not set(info.keys) & set(LABELS), f"{info.metric}: an info key would override a series label"


_check_tables()


def new_live_state(series_ttl_seconds: float = 0.0) -> LiveState:
    """A LiveState that counts and buckets what this module's tables expose."""
    return LiveState(
        counted_figures=sorted({row.figure for row in FIGURE_COUNTERS}),
        info_keys={info.metric: info.keys for info in INFO_GAUGES},
        histogram_kinds=RTT_KINDS,
        rtt_bounds=RTT_BUCKETS,
        commit_bounds=COMMIT_BUCKETS,
        series_ttl_ns=int(series_ttl_seconds * 1e9),
    )


def _family_name(metric: str) -> str:
    # prometheus_client appends `_total` to counter families itself
    return metric.removesuffix("_total")


def _histogram_buckets(histogram: Histogram) -> list[tuple[str, float]]:
    cumulative = histogram.cumulative()
    return [(repr(float(b)), float(c)) for b, c in zip(histogram.bounds, cumulative)] + [
        ("+Inf", float(cumulative[-1]))
    ]


class LiveCollector(Collector):
    """A prometheus_client collector over a LiveState; `clock` gives UTC ns (for the series TTL)."""

    def __init__(self, state: LiveState, clock: Callable[[], int] = wall_ns, freshness: PlanFreshness | None = None,
                 series: bool = True, hop_series: int = DEFAULT_HOP_SERIES) -> None:  # fmt: skip
        """`series` False leaves the per-test families out: /metrics writes those itself (collector/exposition.py).
        `hop_series` bounds the per-hop series of the latest paths (metrics.path_hop_series)."""
        self._state = state
        self._clock = clock
        self._freshness = freshness
        self._with_series = series
        self._hop_series = hop_series

    def describe(self) -> list[Metric]:
        # families come and go with the data; nothing to check for clashes at registration
        return []

    def collect(self) -> Iterator[Metric]:
        state = self._state
        state.expire(self._clock())
        series = list(state.series.values())
        if self._with_series:
            yield from self._test_families(series)
            yield from self._figure_families(series, FIGURE_GAUGES, counter=False)
            yield from self._figure_families(series, FIGURE_COUNTERS, counter=True)
            yield from self._info_families(series)
            yield self._rtt_family(series)
        yield from self._hop_families(series)
        yield from self._probe_families()
        yield from self._ingest_families()
        yield GaugeMetricFamily("qiancheng_series", HELP["qiancheng_series"], value=len(series))

    @staticmethod
    def _test_families(series: Sequence[Series]) -> Iterator[Metric]:
        success = GaugeMetricFamily("qiancheng_test_success", HELP["qiancheng_test_success"], labels=LABELS)
        duration = GaugeMetricFamily(
            "qiancheng_test_duration_seconds", HELP["qiancheng_test_duration_seconds"], labels=LABELS
        )
        started = GaugeMetricFamily(
            "qiancheng_test_timestamp_seconds", HELP["qiancheng_test_timestamp_seconds"], labels=LABELS
        )
        tests = CounterMetricFamily(
            "qiancheng_tests", HELP["qiancheng_tests_total"], labels=LABELS + ("outcome", "reason")
        )
        for one in series:
            if one.latest is not None:
                success.add_metric(one.labels, 1.0 if one.latest.success else 0.0)
                duration.add_metric(one.labels, one.latest.duration_seconds)
                started.add_metric(one.labels, one.latest.start_ns / 1e9)
            for (outcome, reason), count in sorted(one.tests.items()):
                tests.add_metric(one.labels + (outcome, reason), float(count))
        yield from (success, duration, started, tests)

    @staticmethod
    def _figure_families(series: Sequence[Series], table: Sequence[FigureMetric], counter: bool) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for row in table:
            family = families.get(row.metric)
            if family is None:
                labels = LABELS + tuple(k for k, _ in row.extra)
                kind = CounterMetricFamily if counter else GaugeMetricFamily
                family = families[row.metric] = kind(_family_name(row.metric), HELP[row.metric], labels=labels)
            extra = tuple(v for _, v in row.extra)
            for one in series:
                if row.kinds is not None and one.labels[-1] not in row.kinds:  # LABELS ends with kind
                    continue
                if counter:
                    value = one.figure_sums.get(row.figure)
                else:
                    value = row.shows(one.latest) if one.latest is not None else None
                if value is not None:
                    family.add_metric(one.labels + extra, value)
        yield from families.values()

    @staticmethod
    def _info_families(series: Sequence[Series]) -> Iterator[Metric]:
        for row in INFO_GAUGES:
            family = GaugeMetricFamily(row.metric, HELP[row.metric], labels=LABELS + row.keys)
            for one in series:
                if row.kinds is not None and one.labels[-1] not in row.kinds:
                    continue
                values = one.info_labels.get(row.metric)
                if values is not None:
                    family.add_metric(one.labels + values, 1.0)
            yield family

    @staticmethod
    def _rtt_family(series: Sequence[Series]) -> Metric:
        family = HistogramMetricFamily("qiancheng_rtt_seconds", HELP["qiancheng_rtt_seconds"], labels=LABELS)
        for one in series:
            if one.rtt is not None:
                family.add_metric(list(one.labels), _histogram_buckets(one.rtt), one.rtt.total)
        return family

    def _hop_families(self, series: Sequence[Series]) -> Iterator[Metric]:
        """The hops of each path series' latest trace (flow 0), in series order, up to the bound: a few
        hundred thousand hop series would cost Prometheus more than they tell; what is left out is counted."""
        families = [GaugeMetricFamily(metric, HELP[metric], labels=LABELS + HOP_LABELS) for metric, _ in HOP_GAUGES]
        shown = omitted = 0
        for one in series:
            if one.labels[-1] not in _PATH_KINDS or one.latest is None:
                continue
            for hop in one.latest.hops:
                if hop.flow:
                    continue
                if shown >= self._hop_series:
                    omitted += 1
                    continue
                shown += 1
                labels = one.labels + (str(hop.ttl), hop.address or "")
                for family, (_, attribute) in zip(families, HOP_GAUGES):
                    value = getattr(hop, attribute)
                    if value is not None:
                        family.add_metric(labels, float(value))
        yield from families
        yield GaugeMetricFamily("qiancheng_path_hops_omitted", HELP["qiancheng_path_hops_omitted"], value=omitted)

    def _probe_families(self) -> Iterator[Metric]:
        probes = sorted(self._state.probes.items())
        seen = GaugeMetricFamily(
            "qiancheng_probe_last_seen_timestamp_seconds",
            HELP["qiancheng_probe_last_seen_timestamp_seconds"],
            labels=PROBE_LABELS,
        )
        for probe, live in probes:
            seen.add_metric((probe, live.city, live.isp), live.last_seen_ns / 1e9)
        yield seen
        for metric, stat, is_counter in PROBE_STATS:
            family: GaugeMetricFamily | CounterMetricFamily = (
                CounterMetricFamily(_family_name(metric), HELP[metric], labels=PROBE_LABELS)
                if is_counter
                else GaugeMetricFamily(metric, HELP[metric], labels=PROBE_LABELS)
            )
            for probe, live in probes:
                if stat in live.stats:
                    family.add_metric((probe, live.city, live.isp), live.stats[stat])
            yield family
        if self._freshness is not None:
            outdated = GaugeMetricFamily("qiancheng_probe_plan_outdated_seconds", HELP["qiancheng_probe_plan_outdated_seconds"],
                                         labels=PROBE_LABELS)  # fmt: skip
            now_ns = self._clock()
            for probe, live in probes:
                seconds = self._freshness.outdated_seconds(probe, live, now_ns)
                if seconds is not None:
                    outdated.add_metric((probe, live.city, live.isp), seconds)
            yield outdated
        info = GaugeMetricFamily("qiancheng_probe_info", HELP["qiancheng_probe_info"])
        for probe, live in probes:
            extra = {k: v for k, v in sorted(live.labels.items()) if k not in _RESERVED_PROBE_LABELS}
            # free labels differ between probes, so samples are added directly rather than with fixed names
            software = {name: value for name, value in (("version", live.version), ("plan", live.plan)) if value}
            labels = {"probe": probe, "city": live.city, "isp": live.isp, **software, **extra}
            info.samples.append(Sample("qiancheng_probe_info", labels, 1.0))
        yield info

    def _ingest_families(self) -> Iterator[Metric]:
        tally = self._state.ingest
        requests = CounterMetricFamily(
            "qiancheng_ingest_requests", HELP["qiancheng_ingest_requests_total"], labels=("code",)
        )
        for code, count in sorted(tally.requests.items()):
            requests.add_metric((str(code),), float(count))
        batches = CounterMetricFamily(
            "qiancheng_ingest_batches", HELP["qiancheng_ingest_batches_total"], labels=("outcome",)
        )
        for outcome, count in sorted(tally.batches.items()):
            batches.add_metric((outcome,), float(count))
        results = CounterMetricFamily(
            "qiancheng_ingest_results", HELP["qiancheng_ingest_results_total"], labels=("outcome",)
        )
        for outcome, count in sorted(tally.results.items()):
            results.add_metric((outcome,), float(count))
        yield from (requests, batches, results)
        commit = HistogramMetricFamily("qiancheng_ingest_commit_seconds", HELP["qiancheng_ingest_commit_seconds"])
        if tally.commit is not None:
            commit.add_metric([], _histogram_buckets(tally.commit), tally.commit.total)
        yield commit


def build_registry(state: LiveState, clock: Callable[[], int] = wall_ns, process: bool = True,
                   freshness: PlanFreshness | None = None, series: bool = True,
                   hop_series: int = DEFAULT_HOP_SERIES) -> CollectorRegistry:  # fmt: skip
    """A fresh registry exposing `state` (and this process's CPU and memory when `process`; without the
    per-test families when not `series`)."""
    registry = CollectorRegistry()
    registry.register(LiveCollector(state, clock, freshness, series, hop_series))
    if process:
        ProcessCollector(registry=registry)
    return registry
