"""The per-test families as /metrics writes them (collector/exposition.py) are byte for byte what
prometheus_client writes of LiveCollector for the same state: every kind, failures, label values that
need escaping, numbers past Go's switch to exponents, info labels, and series expired by their TTL."""

from __future__ import annotations

import random

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from qiancheng.collector.exposition import render_series
from qiancheng.collector.live import LiveState
from qiancheng.collector.metrics import build_registry, new_live_state
from qiancheng.core.kinds import KINDS
from qiancheng.core.result import Hop, Result, Target
from qiancheng.core.stats import train_stats

T0 = 1_790_000_000_000_000_000
S = 1_000_000_000
# a target name cannot hold a quote or a backslash (NAME_PATTERN); the ISP and a probe id below do
ODD = Target(name="edge-west.1:a", address="198.18.0.10", target_class="edge")
CDN = Target(name="cdn-video", address="https://cdn.example/obj", target_class="cdn")


def _train(kind: str, target: Target, seq: int, samples: list[float | None]) -> Result:
    figures = train_stats(samples).figures()
    if kind == "stamp":
        figures |= {"forward_delay_median_seconds": 0.004, "backward_delay_median_seconds": 0.0041,
                    "clock_error_seconds": -0.0002}  # fmt: skip
    return Result(kind=kind, target=target, start_ns=T0 + seq * S, duration_seconds=0.5, success=any(samples),
                  error=None if any(samples) else "loss", figures=figures, samples=samples, seq=seq)  # fmt: skip


def _results(rng: random.Random) -> list[Result]:
    results = [_train(kind, ODD, seq, [rng.uniform(0.0001, 3.0) if rng.random() > 0.1 else None for _ in range(50)])
               for seq, kind in enumerate(("icmp", "tcp", "stamp") * 4, start=1)]  # fmt: skip
    results.append(_train("icmp", ODD, 99, [None, None]))  # a train with no reply at all
    results.append(Result(kind="http", target=CDN, start_ns=T0, duration_seconds=0.09, success=True, seq=200,
                          figures={"ttfb_seconds": 0.05, "total_seconds": 0.09, "status_code": 200, "bytes": 33_554_432.0,
                                   "cdn_cache_hit": 1.0, "cdn_age_seconds": 1_234_567.0},
                          info={"cache_status": "HIT", "edge": 'lishui-"2"\\a'}))  # fmt: skip
    results.append(Result(kind="dns", target=Target(name="resolver", address="198.18.0.53", target_class="dns"),
                          start_ns=T0, duration_seconds=2.0, success=False, error="timeout", seq=201,
                          figures={"lookup_seconds": 2.0}))  # fmt: skip
    for seq, kind in ((202, "download"), (203, "upload")):
        results.append(Result(kind=kind, target=CDN, start_ns=T0, duration_seconds=10.0, success=True, seq=seq,
                              figures={"throughput_bits_per_second": 941_234_567.25, "bytes": 1.2e9,
                                       "responsiveness_rpm": 812.5, "idle_rtt_seconds": 0.002}))  # fmt: skip
    results.append(Result(kind="path", target=CDN, start_ns=T0, duration_seconds=3.0, success=True, seq=204,
                          figures={"hop_count": 7, "destination_reached": 1, "path_changes": 1, "loss_ratio": 0.0,
                                   "rtt_median_seconds": 0.0123},
                          hops=[Hop(ttl=1, sent=10, received=10, loss_ratio=0.0, address="198.18.0.1")]))  # fmt: skip
    edge = Target(name="edge-capacity", address="198.18.0.7", target_class="edge")
    for seq, direction in ((205, "download"), (206, "upload")):  # one series: /metrics shows the latest's direction
        results.append(Result(kind="capacity", target=edge, start_ns=T0 + seq, duration_seconds=10.6, success=True,
                              seq=seq, info={"direction": direction, "layer": "ip"},
                              figures={"capacity_bits_per_second": 972_305_114.5, "loss_ratio": 0.0004,
                                       "capacity_ethernet_bits_per_second": 982_894_310.0,
                                       "rtt_variation_max_seconds": 0.003}, samples=[9.5e8, 9.72e8]))  # fmt: skip
    return results


def _both(state: LiveState, now_ns: int) -> tuple[bytes, bytes]:
    theirs = generate_latest(build_registry(state, clock=lambda: now_ns, process=False))
    ours = render_series(state, now_ns) + generate_latest(build_registry(state, clock=lambda: now_ns, process=False,
                                                                          series=False))  # fmt: skip
    return ours, theirs


def test_the_quick_exposition_is_prometheus_clients_byte_for_byte() -> None:
    state = new_live_state(series_ttl_seconds=3600)
    rng = random.Random(3)
    for probe in ("p1", "p-2", 'p"3'):
        state.apply(probe, "lishui", 'China "Telecom"\\', _results(rng), T0)
        state.saw_probe(probe, "lishui", "ct", {"site": "olt-3"}, {"spool_backlog": 2.0, "uptime_seconds": 3.5}, T0, "0.1.0")
    # counts past a million: Go writes them with an exponent, and so must we
    state.apply("p1", "quzhou", "cm", [_train("icmp", Target(name="busy", address="198.18.0.11"), 300, [0.001] * 10)], T0)
    busy = next(series for series in state.series.values() if series.labels[3] == "busy")
    assert busy.rtt is not None
    busy.rtt.counts[1] += 2_345_678
    busy.rtt.count += 2_345_678
    busy.tests[("success", "none")] = 1_000_001
    ours, theirs = _both(state, T0 + 60 * S)
    assert ours == theirs
    text = ours.decode()
    assert 'le="+Inf"' in text and "e+06" in text and r'isp="China \"Telecom\"\\"' in text
    families = {family.name for family in text_string_to_metric_families(text)}
    assert {"qiancheng_rtt_seconds", "qiancheng_cdn_info", "qiancheng_one_way_delay_seconds", "qiancheng_tests"} <= families
    assert {result.kind for result in _results(rng)} == set(KINDS), "every kind in the state"


def test_expired_series_leave_both_alike() -> None:
    state = new_live_state(series_ttl_seconds=60)
    state.apply("p1", "lishui", "ct", _results(random.Random(5)), T0)
    state.apply("p2", "lishui", "cm", _results(random.Random(6)), T0 + 100 * S)
    ours, theirs = _both(state, T0 + 120 * S)
    assert ours == theirs and b'probe="p1"' not in ours and b'probe="p2"' in ours


def test_an_empty_state_writes_the_headers_alike() -> None:
    ours, theirs = _both(new_live_state(), T0)
    assert ours == theirs and b"# TYPE qiancheng_rtt_seconds histogram" in ours
