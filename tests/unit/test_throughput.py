"""Throughput engine's pure parts: warm-up detection, window figures, p90, per-stream math, URLs,
TCP_INFO and response-head parsing, and the validation of download/upload settings."""

from __future__ import annotations

import struct
from pathlib import Path

import msgspec
import pytest

from qiancheng.core.configfile import decode_hook
from qiancheng.core.errors import ConfigError
from qiancheng.core.kind_settings import DownloadSettings, UploadSettings, throughput_problem
from qiancheng.probes.cli import main as cli_main
from qiancheng.probes.config import load_probe_config
from qiancheng.probes.measure.tcp_info import INFINITE_SSTHRESH, parse_tcp_info
from qiancheng.probes.measure.throughput import Sample, interval_rates, slow_start_over, stream_url, window_figures
from qiancheng.probes.measure.throughput_streams import StreamError, parse_head


def test_slow_start_is_over_when_the_rate_stops_growing() -> None:
    # slow start doubles the rate each interval, then the link is full
    rates = [10e6, 20e6, 40e6, 80e6, 95e6, 96e6, 95.5e6]
    assert not slow_start_over(rates[:4])
    assert not slow_start_over(rates[:5])  # 95 > 1.1 × 80: still growing
    assert not slow_start_over(rates[:6])  # one steady interval is not enough
    assert slow_start_over(rates)


def test_a_dip_is_not_steady() -> None:
    # a loss being repaired: the rate dips, then in-order data arrives in a leap
    assert not slow_start_over([90e6, 95e6, 60e6, 96e6])
    assert not slow_start_over([90e6, 95e6, 94e6, 80e6])
    assert slow_start_over([90e6, 95e6, 60e6, 96e6, 94e6])


def test_slow_start_is_not_over_while_connecting_or_too_early() -> None:
    assert not slow_start_over([0.0, 0.0, 0.0, 0.0])
    assert not slow_start_over([50e6, 50e6])
    assert slow_start_over([50e6, 50e6, 50e6])


def test_slow_start_growth_and_steady_count_are_parameters() -> None:
    rates = [10.0, 10.5, 11.0, 11.5]
    assert not slow_start_over(rates, growth=1.04)
    assert slow_start_over(rates, growth=1.1, steady=3)


def test_interval_rates_use_the_real_sample_times() -> None:
    samples = [Sample(0.0, (0, 0)), Sample(0.1, (1000, 250)), Sample(0.3, (3000, 250))]
    assert interval_rates(samples) == pytest.approx([1250 * 8 / 0.1, 2000 * 8 / 0.2])


def test_window_figures_mean_p90_bytes_and_streams() -> None:
    # two streams; stream 0 moves 1 MB every 0.1 s, stream 1 half that, with one slow interval
    per_interval = [(1_000_000, 500_000)] * 9 + [(100_000, 50_000)]
    samples = [Sample(10.0, (5_000, 7_000))]
    for index, (a, b) in enumerate(per_interval, start=1):
        last = samples[-1].stream_bytes
        samples.append(Sample(10.0 + index * 0.1, (last[0] + a, last[1] + b)))
    figures = window_figures(samples)
    moved = 9 * 1_500_000 + 150_000
    assert figures["bytes"] == moved
    assert figures["window_seconds"] == pytest.approx(1.0)
    assert figures["throughput_bits_per_second"] == pytest.approx(moved * 8 / 1.0)
    assert figures["streams"] == 2
    assert figures["stream_0_bits_per_second"] == pytest.approx((9_000_000 + 100_000) * 8)
    assert figures["stream_1_bits_per_second"] == pytest.approx((4_500_000 + 50_000) * 8)
    # p90 of nine intervals at 120 Mbit/s and one at 12: interpolated between the 9th and 10th ranks
    assert figures["throughput_p90_bits_per_second"] == pytest.approx(120e6)
    rates = sorted(interval_rates(samples))
    assert rates[0] == pytest.approx(12e6)


def test_window_figures_p90_interpolates() -> None:
    # interval rates 8, 16, ..., 80 Mbit/s: p90 at 0-based rank 9 × 0.9 = 8.1, between 72 and 80 → 72.8
    samples = [Sample(0.0, (0,))]
    for step in range(1, 11):
        samples.append(Sample(float(step), (samples[-1].stream_bytes[0] + step * 1_000_000,)))
    assert window_figures(samples)["throughput_p90_bits_per_second"] == pytest.approx(72.8e6)


def test_window_needs_two_samples() -> None:
    with pytest.raises(ValueError):
        window_figures([Sample(1.0, (10,))])
    with pytest.raises(ValueError):
        window_figures([Sample(1.0, (10,)), Sample(1.0, (20,))])


@pytest.mark.parametrize(
    ("direction", "address", "url", "expected"),
    [
        ("download", "198.18.0.2", None, "http://198.18.0.2:9311/download?bytes=250"),
        ("download", "198.18.0.2:8080", None, "http://198.18.0.2:8080/download?bytes=250"),
        ("upload", "2001:2::1", None, "http://[2001:2::1]:9311/upload"),
        ("download", "edge", "https://cdn.example.net/obj.bin", "https://cdn.example.net/obj.bin"),
        ("download", "https://cdn.example.net/a?x=1", None, "https://cdn.example.net/a?x=1"),
        ("download", "http://r:9311/download", None, "http://r:9311/download?bytes=250"),
        ("download", "http://r:9311/download?bytes=7", None, "http://r:9311/download?bytes=7"),
        ("upload", "http://r:9311/upload", None, "http://r:9311/upload"),
    ],
)
def test_stream_url(direction: str, address: str, url: str | None, expected: str) -> None:
    assert stream_url(direction, address, url, streams=4, max_bytes=1000) == expected  # type: ignore[arg-type]


def _tcp_info_bytes(rtt_us: int, ssthresh: int, cwnd: int, rcv_rtt_us: int, retrans: int, acked: int,
                    mss: int = 1448, sacked: int = 0) -> bytes:
    raw = bytearray(232)
    struct.pack_into("=I", raw, 16, mss)
    struct.pack_into("=I", raw, 28, sacked)
    struct.pack_into("=I", raw, 68, rtt_us)
    struct.pack_into("=I", raw, 76, ssthresh)
    struct.pack_into("=I", raw, 80, cwnd)
    struct.pack_into("=I", raw, 92, rcv_rtt_us)
    struct.pack_into("=I", raw, 100, retrans)
    struct.pack_into("=Q", raw, 120, acked)
    return bytes(raw)


def test_parse_tcp_info_fields_and_slow_start() -> None:
    info = parse_tcp_info(_tcp_info_bytes(1500, INFINITE_SSTHRESH, 10, 2000, 3, 123_456_789_012))
    assert info is not None
    assert (info.rtt_us, info.snd_cwnd, info.rcv_rtt_us, info.total_retrans, info.bytes_acked) == (1500, 10, 2000, 3, 123_456_789_012)
    assert info.in_slow_start
    after = parse_tcp_info(_tcp_info_bytes(1500, 40, 44, 0, 0, 1))
    assert after is not None and not after.in_slow_start


def test_delivered_bytes_count_sacked_segments() -> None:
    info = parse_tcp_info(_tcp_info_bytes(1500, 40, 44, 0, 0, 1_000_001, mss=1448, sacked=10))
    assert info is not None and info.delivered_bytes == 1_000_001 + 14_480


def test_parse_tcp_info_of_an_old_kernel_is_none() -> None:
    assert parse_tcp_info(b"\0" * 104) is None


def test_parse_head() -> None:
    status, headers, length = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\nX-Cache: HIT\r\nAge:  7")
    assert (status, length) == (200, 42)
    assert headers == [("content-length", "42"), ("x-cache", "HIT"), ("age", "7")]
    assert parse_head(b"HTTP/1.1 100 Continue")[0] == 100
    assert parse_head(b"HTTP/1.0 200 OK\r\nServer: x")[2] is None


@pytest.mark.parametrize("head", [b"SSH-2.0-OpenSSH", b"HTTP/1.1 200 OK\r\nno colon", b"HTTP/1.1 200 OK\r\nContent-Length: -1"])
def test_parse_head_refuses_what_is_not_http(head: bytes) -> None:
    with pytest.raises(StreamError) as caught:
        parse_head(head)
    assert caught.value.reason == "protocol"


def test_throughput_defaults_are_valid() -> None:
    for kind in (DownloadSettings, UploadSettings):
        settings = kind()
        assert throughput_problem(settings) is None
        assert (settings.streams, settings.sample_interval) == (4, 0.1)
        assert settings.max_duration() == settings.max_seconds + settings.timeout


@pytest.mark.parametrize(
    ("values", "field", "why"),
    [
        ({"window": "0s"}, "window", "within 0.5..300"),
        ({"warmup": "1m"}, "warmup", "within 0..30"),
        ({"sample_interval": "5ms"}, "sample_interval", "within 0.01..1"),
        ({"window": "1s", "sample_interval": "600ms"}, "window", "two samples"),
        ({"max_bytes": 0}, "max_bytes", "bytes"),
        ({"max_seconds": "1h"}, "max_seconds", "within 1..900"),
        ({"url": "ftp://x/y"}, "url", "http:// or https://"),
    ],
)
def test_throughput_problem_names_field_and_reason(values: dict[str, object], field: str, why: str) -> None:
    settings = msgspec.convert(values, DownloadSettings, dec_hook=decode_hook)
    problem = throughput_problem(settings)
    assert problem is not None and problem[0] == field and why in problem[1]


def test_streams_bounds_are_checked_at_conversion() -> None:
    for streams in (0, 17):
        with pytest.raises(msgspec.ValidationError, match="streams"):
            msgspec.convert({"streams": streams}, UploadSettings)
    assert msgspec.convert({"streams": 16}, UploadSettings).streams == 16


_CONFIG = """probe: {{id: p1, city: c, isp: i}}
collector: {{url: 'http://127.0.0.1:9', token: t}}
targets:
  - name: edge
    address: 198.18.0.2
    kinds:
      download: {settings}
"""


@pytest.mark.parametrize(
    ("settings", "field", "why"),
    [
        ("{window: 0s}", "targets[0].kinds.download.window", "within 0.5..300"),
        ("{streams: 17}", "targets[0].kinds.download.streams", "<= 16"),
        ("{url: 'ftp://x'}", "targets[0].kinds.download.url", "http or https"),
        ("{interval: 20s}", "targets[0].kinds.download.interval", "shorter than the test"),
        ("{max_bytes: lots}", "targets[0].kinds.download.max_bytes", "expected a size"),
    ],
)
def test_config_loader_names_file_line_field(tmp_path: Path, settings: str, field: str, why: str) -> None:
    path = tmp_path / "probe.yaml"
    path.write_text(_CONFIG.format(settings=settings))
    with pytest.raises(ConfigError) as caught:
        load_probe_config(path)
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(path), 7, field)
    assert why in caught.value.reason


def test_config_loader_accepts_download_and_upload(tmp_path: Path) -> None:
    path = tmp_path / "probe.yaml"
    path.write_text(_CONFIG.format(settings="{streams: 8, window: 5s, url: 'https://cdn.example.net/x.bin'}") + "      upload: {}\n")
    config = load_probe_config(path)
    kinds = {job.kind: job.settings for job in config.jobs}
    assert isinstance(kinds["download"], DownloadSettings) and kinds["download"].streams == 8
    assert isinstance(kinds["upload"], UploadSettings) and kinds["upload"].window == 10.0


def test_cli_refuses_bad_throughput_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["once", "--kind", "download", "--duration", "0.1s", "127.0.0.1"]) == 2
    assert "--duration must be within 0.5..300" in capsys.readouterr().err
    assert cli_main(["once", "--kind", "upload", "--streams", "40", "127.0.0.1"]) == 2
    assert "--streams" in capsys.readouterr().err
