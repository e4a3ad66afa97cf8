"""The SLA judgement as Prometheus families, built anew from the latest pass on every scrape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .blame import Blamer
from .judge import Judge, window_name

__all__ = ["SLA_HELP", "SERIES_LABELS", "SlaCollector"]

#: the usual per-test labels of a judged series (kind is empty when the needed kind is not measured)
SERIES_LABELS: Final = ("probe", "city", "isp", "target", "target_class", "kind")

SLA_HELP: Final = {
    "qiancheng_sla_indicator": "SLA indicator over a sliding window of stored results, base units (absent: no data).",
    "qiancheng_sla_breach": "1 while an SLA objective is breached (hysteresis applied), else 0; absent when there is no data.",
    "qiancheng_sla_no_data": "1 when an SLA objective had no data in its judging window (neither pass nor breach).",
    "qiancheng_sla_breach_since_timestamp_seconds": "When the objective's current status (ok, breach, no data) began, Unix seconds.",
    "qiancheng_sla_blame": "Constant 1 while a breach is blamed on a hop of the target's traced path: its segment (probe_side, transit, target_side), TTL, address, and whether loss or delay pointed at it.",
    "qiancheng_sla_threshold": "Threshold of an SLA objective, base units; bound is max (ceiling) or min (floor).",
    "qiancheng_sla_judgement_seconds": "How long the latest SLA judgement pass took, reading the store included, seconds.",
    "qiancheng_sla_judgement_timestamp_seconds": "When the latest SLA judgement pass ran, Unix seconds.",
}


class SlaCollector(Collector):
    """A prometheus_client collector over a Judge's latest pass."""

    def __init__(self, judge: Judge, blamer: Blamer | None = None) -> None:
        self._judge = judge
        self._blamer = blamer

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        judge = self._judge
        objective_labels = SERIES_LABELS + ("profile", "indicator")
        indicator = GaugeMetricFamily("qiancheng_sla_indicator", SLA_HELP["qiancheng_sla_indicator"],
                                      labels=objective_labels + ("window",))  # fmt: skip
        breach = GaugeMetricFamily("qiancheng_sla_breach", SLA_HELP["qiancheng_sla_breach"], labels=objective_labels)
        no_data = GaugeMetricFamily("qiancheng_sla_no_data", SLA_HELP["qiancheng_sla_no_data"], labels=objective_labels)
        blamed = GaugeMetricFamily("qiancheng_sla_blame", SLA_HELP["qiancheng_sla_blame"],
                                   labels=objective_labels + ("segment", "hop", "address", "reason"))  # fmt: skip
        since = GaugeMetricFamily("qiancheng_sla_breach_since_timestamp_seconds",
                                  SLA_HELP["qiancheng_sla_breach_since_timestamp_seconds"],
                                  labels=objective_labels + ("status",))  # fmt: skip
        for judgement in judge.judgements:
            key = judgement.series
            labels = (key.probe, key.city, key.isp, key.target, key.target_class, key.kind,
                      judgement.profile.name, judgement.objective.name)  # fmt: skip
            for window in judgement.windows:
                if window.value is not None:
                    indicator.add_metric(labels + (window_name(window.seconds),), window.value)
            state = judgement.state
            if state.status == "no_data":
                no_data.add_metric(labels, 1.0)
            else:
                breach.add_metric(labels, 1.0 if state.status == "breach" else 0.0)
            since.add_metric(labels + (state.status,), state.since_ns / 1e9)
            found = self._blamer.blame_of(judgement) if self._blamer is not None else None
            if found is not None:
                blamed.add_metric(labels + (found.segment, str(found.hop), found.address or "", found.reason), 1.0)
        yield from (indicator, breach, no_data, since, blamed)
        threshold = GaugeMetricFamily("qiancheng_sla_threshold", SLA_HELP["qiancheng_sla_threshold"],
                                      labels=("profile", "indicator", "bound"))  # fmt: skip
        for profile in judge.profiles.profiles.values():
            for objective in profile.objectives:
                threshold.add_metric((profile.name, objective.name, objective.indicator.bound), objective.threshold)
        yield threshold
        if judge.judged_ns:
            yield GaugeMetricFamily("qiancheng_sla_judgement_seconds", SLA_HELP["qiancheng_sla_judgement_seconds"],
                                    value=judge.pass_seconds)  # fmt: skip
            yield GaugeMetricFamily("qiancheng_sla_judgement_timestamp_seconds",
                                    SLA_HELP["qiancheng_sla_judgement_timestamp_seconds"], value=judge.judged_ns / 1e9)  # fmt: skip
