"""Grafana dashboards for the NOC, generated from code: `python dashboards/generate.py` writes the JSON
beside this file; `--check` exits 1 if a committed file differs from what the code makes.

Generated rather than hand-written because the four dashboards share their variables, their filters
and a lot of panel boilerplate: here each is stated once, so every query carries the same filters, every
panel and query uses the `${datasource}` variable, and panel ids are unique by construction. The JSON
is committed, so Grafana's file provisioning loads it with no build step.

Queries use only metrics of docs/metrics.md (a test checks it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = ["DASHBOARDS", "build_all", "main"]

HERE: Final = Path(__file__).resolve().parent
DATASOURCE: Final = {"type": "prometheus", "uid": "${datasource}"}
#: the classes a city's scorecard shows, in column order (docs/metrics.md, `target_class`)
SCORECARD_CLASSES: Final = (("edge", "edge"), ("cloud_pool", "cloud pool"), ("cdn", "CDN"), ("national_hub", "national hub"))
#: a probe that has not pushed for this long counts as silent (seconds); probes push every few seconds
SILENT_AFTER: Final = 120
PLAN_OUTDATED_AFTER: Final = 1800  # as the ProbePlanOutdated alert

Json = dict[str, Any]

# the label filters of every per-test query; each dashboard has the variables they name
TEST = 'city=~"$city", isp=~"$isp", probe=~"$probe", target=~"$target", target_class=~"$target_class"'
PROBE = 'city=~"$city", isp=~"$isp", probe=~"$probe"'


def _query(expr: str, legend: str = "", *, instant: bool = False, table: bool = False, heatmap: bool = False) -> Json:
    target: Json = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        target["instant"], target["range"] = True, False
    if table:
        target["format"] = "table"
    elif heatmap:
        target["format"] = "heatmap"
    return target


def _variable(name: str, label: str, query: str) -> Json:
    return {
        "name": name, "label": label, "type": "query", "datasource": DATASOURCE,
        "query": {"query": query, "refId": name}, "definition": query, "refresh": 2, "sort": 1,
        "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"},
    }  # fmt: skip


def _variables(names: Sequence[str]) -> list[Json]:
    """The datasource variable, then the chain city → isp → probe → target_class → target (those named)."""
    chain = (
        ("city", "City", "label_values(qiancheng_test_success, city)"),
        ("isp", "ISP", 'label_values(qiancheng_test_success{city=~"$city"}, isp)'),
        ("probe", "Probe", 'label_values(qiancheng_test_success{city=~"$city", isp=~"$isp"}, probe)'),
        ("target_class", "Class", 'label_values(qiancheng_test_success{city=~"$city", isp=~"$isp", probe=~"$probe"}, target_class)'),
        ("target", "Target", 'label_values(qiancheng_test_success{city=~"$city", isp=~"$isp", probe=~"$probe", '
                             'target_class=~"$target_class"}, target)'),
    )  # fmt: skip
    datasource: Json = {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
                        "current": {}, "hide": 0}  # fmt: skip
    return [datasource] + [_variable(*entry) for entry in chain if entry[0] in names]


@dataclass
class Dashboard:
    """A dashboard under construction: panels are laid out left to right, rows of 24 grid units."""

    uid: str
    title: str
    description: str
    variables: Sequence[str]
    time_from: str = "now-6h"
    panels: list[Json] = field(default_factory=list)
    annotations: list[Json] = field(default_factory=list)
    _x: int = 0
    _y: int = 0
    _row_height: int = 0

    def add(self, kind: str, title: str, targets: Sequence[Json], *, width: int = 12, height: int = 8,
            unit: str = "short", description: str = "", **extra: Any) -> Json:  # fmt: skip
        if self._x + width > 24:
            self._x, self._y, self._row_height = 0, self._y + self._row_height, 0
        refs = [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)]
        panel: Json = {
            "id": len(self.panels) + 1, "type": kind, "title": title, "description": description,
            "datasource": DATASOURCE, "targets": refs,
            "gridPos": {"x": self._x, "y": self._y, "w": width, "h": height},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        }  # fmt: skip
        for key, value in extra.items():
            if key == "defaults":
                panel["fieldConfig"]["defaults"].update(value)
            else:
                panel[key] = value
        self.panels.append(panel)
        self._x += width
        self._row_height = max(self._row_height, height)
        return panel

    def json(self) -> Json:
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["qiancheng"], "schemaVersion": 39, "version": 1, "editable": True,
            "time": {"from": self.time_from, "to": "now"}, "refresh": "30s", "timezone": "utc",
            "templating": {"list": _variables(self.variables)},
            "annotations": {"list": self.annotations}, "panels": self.panels,
        }  # fmt: skip


_THRESHOLDS_LOSS: Final = {"mode": "absolute", "steps": [
    {"color": "green", "value": None}, {"color": "yellow", "value": 0.001}, {"color": "orange", "value": 0.01},
    {"color": "red", "value": 0.05}]}  # fmt: skip
_THRESHOLDS_BREACH: Final = {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]}
_MAP_BREACH: Final = [{"type": "value", "options": {"0": {"text": "ok", "color": "green"},
                                                    "1": {"text": "breach", "color": "red"}}}]  # fmt: skip


def _rtt_quantile(q: float, by: str, selector: str, window: str = "$__rate_interval") -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate(qiancheng_rtt_seconds_bucket{{{selector}}}[{window}])))"


def _loss(by: str, selector: str, window: str = "$__rate_interval") -> str:
    return (f"1 - sum by ({by}) (increase(qiancheng_packets_received_total{{{selector}}}[{window}]))"
            f" / sum by ({by}) (increase(qiancheng_packets_sent_total{{{selector}}}[{window}]))")  # fmt: skip


def _share_at_least(bits: float, by: str, selector: str) -> str:
    # the gauge holds the latest test between tests, so its time average is the share of tests when tests
    # run at a fixed interval
    download = f'qiancheng_throughput_bits_per_second{{{selector}, direction="download"}}'
    return f"avg by ({by}) (avg_over_time(({download} >= bool {bits:.0f})[$__range:]))"


def fleet() -> Dashboard:
    d = Dashboard("qiancheng-fleet", "qiancheng · Fleet",
                  "Probes up and silent, their software, plan and clocks, spool backlogs and drops, and what the collectors ingest.", ("city", "isp", "probe"))  # fmt: skip
    seen = f"time() - qiancheng_probe_last_seen_timestamp_seconds{{{PROBE}}}"
    d.add("stat", "Probes reporting", [_query(f"count({seen} < {SILENT_AFTER}) or vector(0)", instant=True)], width=6, height=5,
          description=f"Probes that pushed within the last {SILENT_AFTER} s.")  # fmt: skip
    d.add("stat", f"Probes silent > {SILENT_AFTER} s", [_query(f"count({seen} >= {SILENT_AFTER}) or vector(0)", instant=True)],
          width=6, height=5, defaults={"thresholds": _THRESHOLDS_BREACH, "color": {"mode": "thresholds"}})  # fmt: skip
    d.add("stat", "Results stored / s", [_query('sum(rate(qiancheng_ingest_results_total{outcome="stored"}[$__rate_interval]))',
                                                instant=True)], width=6, height=5, unit="reqps")  # fmt: skip
    d.add("stat", "Results dropped by spools (range)", [_query(
        f"sum(increase(qiancheng_probe_spool_dropped_total{{{PROBE}}}[$__range])) or vector(0)", instant=True)],
          width=6, height=5, defaults={"thresholds": _THRESHOLDS_BREACH, "color": {"mode": "thresholds"}},
          description="Results a full spool dropped: lost for good.")  # fmt: skip
    d.add("table", "Last seen per probe", [_query(seen, instant=True, table=True)], width=12, height=9, unit="s",
          description="Seconds since each probe's latest batch; sort by the value to find the silent ones.",
          transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True, "job": True},
                                                          "renameByName": {"Value": "seconds since last push"}}}])  # fmt: skip
    d.add("timeseries", "Spool backlog per probe", [_query(f"qiancheng_probe_spool_backlog{{{PROBE}}}", "{{probe}}")],
          width=12, height=9, description="Results waiting on the probe: grows while it cannot deliver.")  # fmt: skip
    d.add("timeseries", "Spool drops and refusals", [
        _query(f"sum by (probe) (increase(qiancheng_probe_spool_dropped_total{{{PROBE}}}[$__rate_interval]))", "dropped {{probe}}"),
        _query(f"sum by (probe) (increase(qiancheng_probe_spool_rejected_total{{{PROBE}}}[$__rate_interval]))", "refused {{probe}}"),
    ], width=12)  # fmt: skip
    d.add("stat", "Probes behind the plan > 30 min", [_query(
        f"count(qiancheng_probe_plan_outdated_seconds{{{PROBE}}} > {PLAN_OUTDATED_AFTER}) or vector(0)", instant=True)],
          width=6, height=5, defaults={"thresholds": _THRESHOLDS_BREACH, "color": {"mode": "thresholds"}},
          description="Probes running another version of the central plan than the collector would give them, for "
                      "longer than the ProbePlanOutdated alert allows; their logs say why.")  # fmt: skip
    d.add("stat", "Probes with unsynchronised clocks", [_query(
        f"count(qiancheng_probe_clock_synced{{{PROBE}}} == 0) or vector(0)", instant=True)],
          width=6, height=5, defaults={"thresholds": _THRESHOLDS_BREACH, "color": {"mode": "thresholds"}},
          description="Probes whose kernel says no NTP daemon disciplines the clock: their start times and one-way "
                      "figures may be off.")  # fmt: skip
    d.add("table", "Probes per software version", [_query(f"count by (version) (qiancheng_probe_info{{{PROBE}}})",
                                                           instant=True, table=True)], width=6, height=5,
          transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True},
                                                          "renameByName": {"Value": "probes"}}}])  # fmt: skip
    d.add("timeseries", "Clock error bound per probe", [_query(f"qiancheng_probe_clock_maxerror_seconds{{{PROBE}}}", "{{probe}}")],
          width=6, height=5, unit="s", description="The kernel's bound on each box's clock error (adjtimex maxerror).")  # fmt: skip
    d.add("table", "Software and plan per probe", [_query(f"qiancheng_probe_info{{{PROBE}}}", instant=True, table=True)],
          width=12, height=9, description="The software version and the central plan version of each probe's latest batch.",
          transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True,
                                                                            "job": True}}}])  # fmt: skip
    d.add("timeseries", "Load per CPU", [_query(
        f"qiancheng_probe_load1{{{PROBE}}} / on (probe, city, isp) qiancheng_probe_cpus{{{PROBE}}}", "{{probe}}")],
          width=12, height=9, unit="percentunit",
          description="1-minute load over the CPUs each probe may use: above 1, the box is busier than its CPUs and "
                      "its own delay enters what it measures.")  # fmt: skip
    d.add("timeseries", "Failing tests per city", [_query(f"sum by (city) (1 - qiancheng_test_success{{{PROBE}}})", "{{city}}")],
          width=12, description="Series whose latest test failed.")  # fmt: skip
    d.add("timeseries", "Ingest: results by outcome", [_query(
        "sum by (instance, outcome) (rate(qiancheng_ingest_results_total[$__rate_interval]))", "{{instance}} {{outcome}}")],
          width=8, unit="reqps")  # fmt: skip
    d.add("timeseries", "Ingest: requests by HTTP status", [_query(
        "sum by (instance, code) (rate(qiancheng_ingest_requests_total[$__rate_interval]))", "{{instance}} {{code}}")],
          width=8, unit="reqps", description="503: the store could not commit; the probes retry.")  # fmt: skip
    d.add("timeseries", "Store commit time p95", [_query(
        "histogram_quantile(0.95, sum by (instance, le) (rate(qiancheng_ingest_commit_seconds_bucket[$__rate_interval])))",
        "{{instance}}")], width=8, unit="s")  # fmt: skip
    return d


def city_scorecard() -> Dashboard:
    d = Dashboard("qiancheng-city-scorecard", "qiancheng · City scorecard",
                  "One row per city over the dashboard's time range: RTT to each class of target, loss, "
                  "throughput, gigabit readiness, responsiveness, voice MOS, CDN cache hits and SLA status.",
                  ("city", "isp", "probe", "target_class", "target"), time_from="now-24h")  # fmt: skip
    columns: list[tuple[str, str, str]] = []  # (expr, column title, unit)
    for target_class, name in SCORECARD_CLASSES:
        selector = f'{TEST}, target_class="{target_class}"'
        columns.append((_rtt_quantile(0.5, "city", selector, "$__range"), f"RTT p50 {name}", "s"))
        columns.append((_rtt_quantile(0.95, "city", selector, "$__range"), f"RTT p95 {name}", "s"))
    columns += [
        (_loss("city", TEST, "$__range"), "loss", "percentunit"),
        (f'avg by (city) (avg_over_time(qiancheng_throughput_bits_per_second{{{TEST}, direction="download"}}[$__range]))',
         "download", "bps"),
        (f'avg by (city) (avg_over_time(qiancheng_throughput_bits_per_second{{{TEST}, direction="upload"}}[$__range]))',
         "upload", "bps"),
        (_share_at_least(500e6, "city", TEST), "downloads ≥ 500 Mbit/s", "percentunit"),
        (_share_at_least(1e9, "city", TEST), "downloads ≥ 1 Gbit/s", "percentunit"),
        (f'avg by (city) (avg_over_time(qiancheng_responsiveness_rpm{{{TEST}, direction="download"}}[$__range]))',
         "responsiveness (RPM)", "short"),
        (f"avg by (city) (avg_over_time(qiancheng_mos_estimate{{{TEST}}}[$__range]))", "voice MOS (est.)", "short"),
        (f"avg by (city) (avg_over_time(qiancheng_cdn_cache_hit{{{TEST}}}[$__range]))", "CDN cache hits", "percentunit"),
        (f"count by (city) (qiancheng_sla_breach{{{TEST}}} == 1) or count by (city) (qiancheng_sla_breach{{{TEST}}}) * 0",
         "SLA objectives breached", "short"),
    ]  # fmt: skip
    rename = {f"Value #{chr(ord('A') + i)}": title for i, (_, title, _) in enumerate(columns)}
    overrides = [{"matcher": {"id": "byName", "options": title}, "properties": [{"id": "unit", "value": unit}]}
                 for _, title, unit in columns]  # fmt: skip
    table = d.add("table", "Scorecard: one row per city (click a column to sort)",
                  [_query(expr, instant=True, table=True) for expr, _, _ in columns], width=24, height=12,
                  description="RTT percentiles are exact over every sample in the range (histogram); loss from the "
                              "packet counters; readiness = share of download tests at or above the rate.",
                  transformations=[{"id": "merge", "options": {}},
                                   {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": rename}}],
                  options={"showHeader": True, "sortBy": [{"displayName": "city", "desc": False}]})  # fmt: skip
    table["fieldConfig"]["overrides"] = overrides
    d.add("table", "SLA status per city and profile", [_query(
        f"max by (city, profile) (qiancheng_sla_breach{{{TEST}}})", instant=True, table=True)], width=12, height=9,
          defaults={"mappings": _MAP_BREACH, "thresholds": _THRESHOLDS_BREACH, "color": {"mode": "thresholds"},
                    "custom": {"cellOptions": {"type": "color-background"}}},
          transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": {"Value": "status"}}}])  # fmt: skip
    d.add("timeseries", "RTT p95 per city and class", [_query(_rtt_quantile(0.95, "city, target_class", TEST),
                                                              "{{city}} {{target_class}}")], width=12, height=9, unit="s")  # fmt: skip
    d.add("timeseries", "Loss per city", [_query(_loss("city", TEST), "{{city}}")], width=12, unit="percentunit",
          defaults={"thresholds": _THRESHOLDS_LOSS})  # fmt: skip
    d.add("table", "CDN edges serving each city (latest test)", [_query(
        f"count by (city, target, edge, cache_status) (qiancheng_cdn_info{{{TEST}}})", instant=True, table=True)],
          width=24, height=8,
          description="Which edge answered each city's CDN tests and whether it held the object: an edge far from "
                      "the city, or misses, mean users are served from afar.",
          transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": {"Value": "probes"}}}])  # fmt: skip
    d.add("timeseries", "Download per city", [_query(
        f'avg by (city) (qiancheng_throughput_bits_per_second{{{TEST}, direction="download"}})', "{{city}}")],
          width=12, unit="bps")  # fmt: skip
    return d


def target_detail() -> Dashboard:
    d = Dashboard("qiancheng-target-detail", "qiancheng · Target detail",
                  "One target seen from its probes: latency distribution over time (SmokePing-style), loss, "
                  "HTTP phases, throughput, latency under load, and the path hop by hop.", ("city", "isp", "probe", "target_class", "target"))  # fmt: skip
    d.add("heatmap", "Latency distribution (every RTT sample)", [_query(
        f"sum by (le) (increase(qiancheng_rtt_seconds_bucket{{{TEST}}}[$__rate_interval]))", "{{le}}", heatmap=True)],
          width=24, height=10, unit="s",
          description="Each column is the RTT histogram of one interval: a dark, tight band is a steady path; "
                      "smear upwards is queueing.",
          options={"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 0,
                   "color": {"mode": "scheme", "scheme": "Greys", "exponent": 0.5, "steps": 64, "reverse": False},
                   "rowsFrame": {"layout": "le"}, "tooltip": {"show": True, "yHistogram": True}})  # fmt: skip
    d.add("timeseries", "Median RTT", [
        _query(_rtt_quantile(0.5, "probe, target", TEST), "median {{probe}} → {{target}}"),
        _query(f'qiancheng_test_rtt_seconds{{{TEST}, statistic="median"}}', "latest test {{probe}} → {{target}} {{kind}}"),
    ], width=24, height=7, unit="s")  # fmt: skip
    d.add("state-timeline", "Loss (colour: green 0, yellow ≥ 0.1 %, orange ≥ 1 %, red ≥ 5 %)", [_query(
        _loss("probe, target", TEST), "{{probe}} → {{target}}")], width=24, height=5, unit="percentunit",
          defaults={"thresholds": _THRESHOLDS_LOSS, "color": {"mode": "thresholds"}},
          options={"showValue": "never", "mergeValues": False})  # fmt: skip
    d.add("timeseries", "HTTP phases of the latest test", [_query(
        f'qiancheng_http_phase_seconds{{{TEST}, phase!="total"}}', "{{phase}} {{probe}} → {{target}}")],
          width=12, height=8, unit="s", defaults={"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 60}},
          description="dns + connect + tls + ttfb, stacked: the total up to the first byte.")  # fmt: skip
    d.add("timeseries", "DNS lookup and jitter", [
        _query(f"qiancheng_dns_lookup_seconds{{{TEST}}}", "dns {{probe}} → {{target}}"),
        _query(f"qiancheng_jitter_seconds{{{TEST}}}", "jitter {{probe}} → {{target}} {{kind}}"),
    ], width=12, height=8, unit="s")  # fmt: skip
    d.add("timeseries", "Throughput", [_query(
        f"qiancheng_throughput_bits_per_second{{{TEST}}}", "{{direction}} {{probe}} → {{target}}")], width=12, unit="bps")  # fmt: skip
    d.add("timeseries", "Latency idle and under load", [
        _query(f"qiancheng_loaded_rtt_seconds{{{TEST}}}", "during {{direction}} {{probe}} → {{target}}"),
        _query(f"qiancheng_idle_rtt_seconds{{{TEST}}}", "idle before {{direction}} {{probe}} → {{target}}"),
    ], width=12, unit="s",
          description="RTT on separate connections before and while a download or upload runs; the gap is bufferbloat.")  # fmt: skip
    d.add("timeseries", "Responsiveness under load (round trips per minute)", [_query(
        f"qiancheng_responsiveness_rpm{{{TEST}}}", "{{direction}} {{probe}} → {{target}}")], width=12, unit="short",
          description="draft-ietf-ippm-responsiveness: higher is better; a few hundred means queues of hundreds of ms.")  # fmt: skip
    d.add("timeseries", "STAMP one-way delays", [
        _query(f"qiancheng_one_way_delay_seconds{{{TEST}}}", "{{direction}} {{probe}} → {{target}}"),
        _query(f"qiancheng_clock_error_seconds{{{TEST}}}", "clock error bound {{probe}} → {{target}}"),
    ], width=12, unit="s",
          description="Forward and backward medians (RFC 8762); only as good as the two clocks: read them with the "
                      "clock error bound beside them.")  # fmt: skip
    d.add("timeseries", "Voice MOS estimate (E-model)", [_query(
        f"qiancheng_mos_estimate{{{TEST}}}", "{{kind}} {{probe}} → {{target}}")], width=12, unit="short",
          defaults={"min": 1, "max": 5},
          description="ITU-T G.107 estimate for G.711 from delay, jitter and loss; 4.4 is the best a call can get.")  # fmt: skip
    d.add("table", "CDN cache status and edge (latest test)", [_query(
        f"qiancheng_cdn_info{{{TEST}}}", instant=True, table=True)], width=24, height=6,
          transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True, "job": True, "Value": True}}}])  # fmt: skip
    hidden = {name: True for name in ("Time", "__name__", "job", "instance", "city", "isp", "kind", "target_class")}
    d.add("table", "Path to the target, hop by hop (latest trace)", [
        _query(f"qiancheng_path_hop_rtt_seconds{{{TEST}}}", instant=True, table=True),
        _query(f"qiancheng_path_hop_loss_ratio{{{TEST}}}", instant=True, table=True),
        _query(f"qiancheng_path_hop_rate_limited{{{TEST}}}", instant=True, table=True),
    ], width=24, height=9,
          description="Each hop of the probe's latest trace (kind path), as mtr shows it: the address that answered, "
                      "its median RTT and the share of probes it left unanswered. Loss at a hop that does not "
                      "persist to the later hops is ICMP rate limiting (rate limited = 1), not path loss. "
                      "GET /api/v1/paths has every hop and the history of changes.",
          transformations=[
              {"id": "merge", "options": {}},
              {"id": "organize", "options": {"excludeByName": hidden, "indexByName": {"probe": 0, "target": 1, "hop": 2, "address": 3},
                                             "renameByName": {"Value #A": "median RTT", "Value #B": "loss", "Value #C": "rate limited"}}},
              {"id": "sortBy", "options": {"sort": [{"field": "hop"}]}},
          ],
          defaults={"custom": {"align": "auto"}})  # fmt: skip
    d.panels[-1]["fieldConfig"]["overrides"] = [
        {"matcher": {"id": "byName", "options": "median RTT"}, "properties": [{"id": "unit", "value": "s"}]},
        {"matcher": {"id": "byName", "options": "loss"}, "properties": [{"id": "unit", "value": "percentunit"}]},
        {"matcher": {"id": "byName", "options": "hop"}, "properties": [{"id": "unit", "value": "none"}]},
    ]
    d.add("timeseries", "Path length and changes", [
        _query(f"qiancheng_path_hops{{{TEST}}}", "hops {{probe}} → {{target}}"),
        _query(f"increase(qiancheng_path_changes_total{{{TEST}}}[$__rate_interval])", "changes {{probe}} → {{target}}"),
    ], width=24, height=6, unit="short",
          description="Hops to the target in each probe's latest trace, and path changes (a trace whose hop list "
                      "differs from the previous one); changes also mark the other graphs.")  # fmt: skip
    d.annotations.append({
        "name": "Path changes", "enable": True, "iconColor": "orange", "datasource": DATASOURCE,
        "expr": f"increase(qiancheng_path_changes_total{{{TEST}}}[2m]) > 0", "step": "60s",
        "titleFormat": "path changed", "textFormat": "{{probe}} → {{target}}", "tagKeys": "probe,target",
    })  # fmt: skip
    return d


def sla() -> Dashboard:
    d = Dashboard("qiancheng-sla", "qiancheng · SLA",
                  "Breaches over time and the share of time within SLA, per profile and city.",
                  ("city", "isp", "probe", "target_class", "target"), time_from="now-7d")  # fmt: skip
    breach = f"qiancheng_sla_breach{{{TEST}}}"
    d.add("stat", "Objectives in breach now", [_query(f"sum({breach}) or vector(0)", instant=True)], width=8, height=5,
          defaults={"thresholds": _THRESHOLDS_BREACH, "color": {"mode": "thresholds"}})  # fmt: skip
    d.add("stat", "Objectives met now", [_query(f"count({breach} == 0) or vector(0)", instant=True)], width=8, height=5)
    d.add("stat", "Objectives without data", [_query(f"sum(qiancheng_sla_no_data{{{TEST}}}) or vector(0)", instant=True)],
          width=8, height=5)  # fmt: skip
    d.add("timeseries", "Breaches over time per profile", [_query(f"sum by (profile) ({breach})", "{{profile}}")],
          width=24, height=8, defaults={"custom": {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}}})  # fmt: skip
    d.add("table", "Time within SLA per profile and city (range)", [_query(
        f"1 - avg by (profile, city) (avg_over_time({breach}[$__range]))", instant=True, table=True)],
          width=12, height=10, unit="percentunit",
          description="Share of the range each city's objectives of a profile were not in breach (no-data time excluded).",
          transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": {"Value": "within SLA"}}}])  # fmt: skip
    d.add("state-timeline", "Breach state per city and profile", [_query(
        f"max by (city, profile) ({breach})", "{{city}} {{profile}}")], width=12, height=10,
          defaults={"mappings": _MAP_BREACH, "thresholds": _THRESHOLDS_BREACH, "color": {"mode": "thresholds"}})  # fmt: skip
    d.add("table", "Indicators against their thresholds", [_query(
        f"qiancheng_sla_indicator{{{TEST}}}", instant=True, table=True)], width=24, height=9,
          transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True, "job": True}}}])  # fmt: skip
    return d


DASHBOARDS: Final = (fleet, city_scorecard, target_detail, sla)


def build_all() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {f"{d.uid}.json": json.dumps(d.json(), indent=2, ensure_ascii=False) + "\n" for d in (b() for b in DASHBOARDS)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the qiancheng Grafana dashboards (JSON) into dashboards/.")
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard differs from the code")
    args = parser.parse_args(argv)
    stale = []
    for name, text in build_all().items():
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run python dashboards/generate.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
