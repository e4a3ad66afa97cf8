"""The arithmetic of responsiveness (draft-ietf-ippm-responsiveness-06 §5.3.1) on hand-computed sets."""

from __future__ import annotations

import pytest

from qiancheng.probes.measure.loaded_latency import (
    ProbeRoundTrips,
    probe_plan,
    responsiveness,
    tls_round_trips,
    trimmed_mean,
)

ms = 1e-3


# --- single-sided trimmed mean at 95 %: the floor(n * 5 / 100) largest samples are dropped


@pytest.mark.parametrize(
    ("samples", "percent", "expected"),
    [
        ([float(i) for i in range(1, 20)], 95, 10.0),  # 19 samples: 19*5//100 = 0 dropped, mean of 1..19
        ([float(i) for i in range(1, 21)], 95, 10.0),  # 20 samples: 20 dropped, mean of 1..19 = 10
        ([float(i) for i in range(20, 0, -1)], 95, 10.0),  # the order does not matter
        ([float(i) for i in range(1, 41)], 95, 19.5),  # 40 samples: 39, 40 dropped, mean of 1..38
        ([1.0] * 19 + [1000.0], 95, 1.0),  # one outlier in 20 goes
        ([1.0] * 18 + [1000.0, 1000.0], 95, (18 + 1000) / 19),  # two outliers in 20: only one goes
        ([4.0, 1.0, 3.0, 2.0], 50, 1.5),  # half kept: mean of 1 and 2
        ([7.0], 95, 7.0),
        ([2.0, 4.0], 100, 3.0),  # 100 %: the plain mean
    ],
)
def test_trimmed_mean(samples: list[float], percent: int, expected: float) -> None:
    assert trimmed_mean(samples, percent) == pytest.approx(expected)


def test_trimmed_mean_refuses_no_samples_and_bad_percent() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        trimmed_mean([])
    with pytest.raises(ValueError, match="percent"):
        trimmed_mean([1.0], 0)
    with pytest.raises(ValueError, match="percent"):
        trimmed_mean([1.0], 101)


# --- responsiveness in round trips per minute


def test_tls_case_is_60_over_the_mean_of_three_trimmed_means() -> None:
    samples = ProbeRoundTrips(
        tcp=tuple([10 * ms] * 19 + [900 * ms]),  # TM drops the 900 ms outlier: 10 ms
        tls=(20 * ms, 20 * ms),
        http=(25 * ms, 35 * ms),  # TM = mean = 30 ms
    )
    # (10 + 20 + 30) / 3 = 20 ms -> 60 / 0.020 = 3000 RPM
    assert responsiveness(samples, tls=True) == pytest.approx(3000.0)


def test_tcp_only_case_leaves_tls_out_instead_of_counting_it_as_zero() -> None:
    samples = ProbeRoundTrips(tcp=(10 * ms,), http=(30 * ms,))
    # (10 + 30) / 2 = 20 ms -> 3000 RPM; a zero TLS term would have given 60 / (40/3 ms) = 4500
    assert responsiveness(samples, tls=False) == pytest.approx(3000.0)
    # TLS samples of a plain-http run (none are ever made) would not enter the formula either
    assert responsiveness(ProbeRoundTrips(tcp=(10 * ms,), tls=(1.0,), http=(30 * ms,)), tls=False) == pytest.approx(3000.0)


def test_self_probes_are_averaged_with_foreign_rpm() -> None:
    samples = ProbeRoundTrips(tcp=(10 * ms,), tls=(20 * ms,), http=(30 * ms,), self_probes=(50 * ms, 70 * ms))
    # foreign 3000 RPM; self: TM = 60 ms -> 1000 RPM; the draft's average of the two: 2000 RPM
    assert responsiveness(samples, tls=True) == pytest.approx(2000.0)


def test_rpm_falls_as_round_trips_grow() -> None:
    idle = ProbeRoundTrips(tcp=(1 * ms,), http=(1 * ms,))
    loaded = ProbeRoundTrips(tcp=(250 * ms,), http=(250 * ms,))
    assert responsiveness(idle, tls=False) == pytest.approx(60_000.0)
    assert responsiveness(loaded, tls=False) == pytest.approx(240.0)


@pytest.mark.parametrize(
    ("samples", "tls"),
    [
        (ProbeRoundTrips(), False),
        (ProbeRoundTrips(tcp=(10 * ms,)), False),  # no HTTP round trip
        (ProbeRoundTrips(http=(10 * ms,)), False),  # no TCP round trip
        (ProbeRoundTrips(tcp=(10 * ms,), http=(10 * ms,)), True),  # https without a TLS round trip
        (ProbeRoundTrips(self_probes=(10 * ms,)), False),  # self probes alone are not enough
    ],
)
def test_no_figure_without_every_kind_the_formula_needs(samples: ProbeRoundTrips, tls: bool) -> None:
    assert responsiveness(samples, tls) is None


def test_pooled_round_trips_are_every_foreign_sample() -> None:
    samples = ProbeRoundTrips(tcp=(1.0,), tls=(2.0,), http=(3.0, 4.0), self_probes=(9.0,))
    assert sorted(samples.pooled()) == [1.0, 2.0, 3.0, 4.0]


# --- what a probe asks for


def test_responder_load_is_probed_with_ping_on_the_same_server() -> None:
    plan, method = probe_plan("http://198.18.0.2:8080/download?bytes=1000000")
    assert (method, plan.scheme, plan.host, plan.port, plan.target) == ("GET", "http", "198.18.0.2", 8080, "/ping")
    plan, method = probe_plan("https://[2001:2::2]/upload")
    assert (method, plan.host, plan.port, plan.target, plan.host_header) == ("GET", "2001:2::2", 443, "/ping", "[2001:2::2]")
    plan, method = probe_plan("http://198.18.0.2:8080/qc/download?bytes=1")  # a responder behind a path prefix
    assert (method, plan.target) == ("GET", "/qc/ping")
    plan, method = probe_plan("http://198.18.0.2:8080/ping")  # the ping URL itself
    assert (method, plan.target) == ("GET", "/ping")


def test_other_urls_are_probed_with_head_of_themselves() -> None:
    plan, method = probe_plan("https://cdn.example.net/video/seg1.mp4?x=1")
    assert (method, plan.host, plan.port, plan.target) == ("HEAD", "cdn.example.net", 443, "/video/seg1.mp4?x=1")
    plan, method = probe_plan("https://cdn.example.net/downloads")  # only the responder's exact names
    assert (method, plan.target) == ("HEAD", "/downloads")


def test_bad_url_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        probe_plan("ftp://198.18.0.2/download")


@pytest.mark.parametrize(("version", "round_trips"), [("TLSv1.3", 1), ("TLSv1.2", 2), ("TLSv1", 2), (None, 2)])
def test_tls_handshake_round_trips(version: str | None, round_trips: int) -> None:
    assert tls_round_trips(version) == round_trips
