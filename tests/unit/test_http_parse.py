"""Pure helpers of the HTTP measurement: URL plans, header block ends, phase arithmetic, info from headers."""

from __future__ import annotations

import pytest

from qiancheng.probes.measure.http_phases import (
    Marks,
    RequestPlan,
    header_block_end,
    parse_url,
    phase_figures,
    request_headers,
    response_info,
)

MS = 1_000_000  # ns


@pytest.mark.parametrize(
    ("url", "plan"),
    [
        ("http://example.com", RequestPlan("http", "example.com", 80, "/", "example.com")),
        ("https://Example.COM/a/b?x=1&y=2", RequestPlan("https", "example.com", 443, "/a/b?x=1&y=2", "example.com")),
        ("https://cdn.example:8443/seg.ts", RequestPlan("https", "cdn.example", 8443, "/seg.ts", "cdn.example:8443")),
        ("http://127.0.0.1:9311/ping", RequestPlan("http", "127.0.0.1", 9311, "/ping", "127.0.0.1:9311")),
        ("http://[::1]:8080/", RequestPlan("http", "::1", 8080, "/", "[::1]:8080")),
        ("https://[2001:db8::1]/", RequestPlan("https", "2001:db8::1", 443, "/", "[2001:db8::1]")),
        ("http://example.com:80/", RequestPlan("http", "example.com", 80, "/", "example.com")),
    ],
)
def test_parse_url(url: str, plan: RequestPlan) -> None:
    assert parse_url(url) == plan


@pytest.mark.parametrize("url", ["ftp://example.com/", "example.com", "http:///path", "http://example.com:99999/"])
def test_parse_url_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


def test_ip_literal() -> None:
    assert parse_url("http://[::1]/").is_ip_literal
    assert parse_url("http://198.18.0.1/").is_ip_literal
    assert not parse_url("http://localhost/").is_ip_literal


def test_request_headers_defaults_and_replacement() -> None:
    plan = parse_url("https://cdn.example/x")
    headers = request_headers(plan, "qiancheng/0.1.0", {"accept": "video/*", "X-Probe": "cz-1"})
    assert headers == [
        ("Host", "cdn.example"),
        ("User-Agent", "qiancheng/0.1.0"),
        ("accept", "video/*"),
        ("Connection", "close"),
        ("X-Probe", "cz-1"),
    ]


@pytest.mark.parametrize(
    ("received", "blocks", "end"),
    [
        (b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody", 1, 25),
        (b"HTTP/1.1 200 OK\nA: b\n\nbody", 1, 22),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", 2, 44),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", 2, None),
        (b"HTTP/1.1 200 OK\r\nA: b\r\n", 1, None),
    ],
)
def test_header_block_end(received: bytes, blocks: int, end: int | None) -> None:
    assert header_block_end(received, blocks) == end


def test_phase_figures_https() -> None:
    marks = Marks(start=0, namelookup=2 * MS, connect=5 * MS, appconnect=15 * MS, pretransfer=16 * MS,
                  starttransfer=36 * MS, total=50 * MS)  # fmt: skip
    figures = phase_figures(marks, tls=True)
    assert figures == pytest.approx({
        "dns_seconds": 0.002, "connect_seconds": 0.003, "tls_seconds": 0.010, "ttfb_seconds": 0.020,
        "total_seconds": 0.050, "time_namelookup_seconds": 0.002, "time_connect_seconds": 0.005,
        "time_appconnect_seconds": 0.015, "time_pretransfer_seconds": 0.016,
        "time_starttransfer_seconds": 0.036, "time_total_seconds": 0.050,
    })  # fmt: skip
    phases = sum(figures[f"{p}_seconds"] for p in ("dns", "connect", "tls", "ttfb"))
    assert phases <= figures["total_seconds"]


def test_phase_figures_plain_http_has_no_tls_like_curl() -> None:
    marks = Marks(start=100, namelookup=100, connect=100 + MS, pretransfer=100 + MS, starttransfer=100 + 3 * MS,
                  total=100 + 4 * MS)  # fmt: skip
    figures = phase_figures(marks, tls=False)
    assert figures["dns_seconds"] == 0
    assert figures["tls_seconds"] == 0 == figures["time_appconnect_seconds"]
    assert figures["ttfb_seconds"] == pytest.approx(0.002)


def test_phase_figures_stop_at_the_phase_reached() -> None:
    assert phase_figures(Marks(start=0), tls=True) == {}
    reached = phase_figures(Marks(start=0, namelookup=MS, connect=2 * MS), tls=True)
    assert set(reached) == {"dns_seconds", "time_namelookup_seconds", "connect_seconds", "time_connect_seconds"}
    waiting = phase_figures(Marks(start=0, namelookup=0, connect=MS, pretransfer=MS), tls=False)
    assert "ttfb_seconds" not in waiting and "time_pretransfer_seconds" in waiting


def test_response_info() -> None:
    headers = [(b"Server", b"nginx"), (b"X-Cache", b"MISS"), (b"x-cache", b"HIT"), (b"Age", b"3"),
               (b"CF-Cache-Status", b"DYNAMIC"), (b"Via", b"1.1 varnish"), (b"Content-Type", b"text/plain")]  # fmt: skip
    assert response_info(headers) == {
        "server": "nginx", "x_cache": "MISS, HIT", "age": "3", "cf_cache_status": "DYNAMIC", "via": "1.1 varnish",
    }  # fmt: skip


def test_response_info_truncates() -> None:
    assert len(response_info([(b"Via", b"v" * 5000)])["via"]) == 255
