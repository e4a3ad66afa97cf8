"""Hostile requests against a real collector: each gets a clear 4xx with a JSON reason, the log has no
traceback, and 10 000 of them leave the collector's memory where it was (within 20 MB)."""

from __future__ import annotations

import gzip
import http.client
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Processes
from tests.integration import chaos
from tests.integration.helpers import Collector

PROBE, TOKEN = "hostile-01", "token-hostile-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
NOW = time.time_ns()
REQUESTS_FOR_MEMORY = 10_000
RSS_GROWTH_LIMIT_BYTES = 20 * 1024 * 1024


def _result(**changes: object) -> dict[str, object]:
    result: dict[str, object] = {"kind": "icmp", "target": {"name": "edge", "address": "127.0.0.1", "class": "edge"},
                                 "start_ns": NOW, "duration_seconds": 0.1, "success": True, "seq": 1}  # fmt: skip
    result.update(changes)
    return result


def _batch(results: list[dict[str, object]] | None = None, **changes: object) -> bytes:
    body: dict[str, object] = {"probe_id": PROBE, "batch_id": "hostile-0001", "results": results or [_result()]}
    body.update(changes)
    return json.dumps(body).encode()


def _gzip_bomb() -> bytes:
    # 1 GiB of spaces inflates from about 1 MiB; the bound stops it at max_body_bytes
    chunk = gzip.compress(b" " * (64 * 1024 * 1024), compresslevel=9)
    return chunk * 16


@dataclass(frozen=True)
class Hostile:
    name: str
    body: bytes
    status: int
    headers: dict[str, str]


def corpus() -> list[Hostile]:
    good = _batch()
    zipped = gzip.compress(good)
    gz = {**AUTH, "Content-Encoding": "gzip"}
    invented = [_result(seq=i + 1, target={"name": f"invented-{i}", "address": "127.0.0.1"}) for i in range(10_000)]
    cases = [
        ("truncated gzip", zipped[: len(zipped) // 2], 400, gz),
        ("corrupt gzip", zipped[:10] + b"\xff" * 40 + zipped[50:], 400, gz),
        ("gzip bomb", _gzip_bomb(), 413, gz),
        ("not gzip but says so", good, 400, gz),
        ("deep nesting", b'{"probe_id": "hostile-01", "batch_id": "hostile-0001", "results": [], "labels": '
                         + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001, 422, AUTH),
        ("deep arrays", b"[" * 100_000 + b"]" * 100_000, 422, AUTH),
        ("huge number", _batch([_result(start_ns=int("9" * 4000))]), 422, AUTH),
        ("huge float", _batch([_result(duration_seconds=float("1e308") * 10)]).replace(b"Infinity", b"1e999"), 422, AUTH),
        ("NaN", _batch([_result(duration_seconds=float("nan"))]), 400, AUTH),
        ("Infinity figure", _batch([_result(figures={"loss_ratio": float("inf")})]), 400, AUTH),
        ("negative duration", _batch([_result(duration_seconds=-1.0)]), 422, AUTH),
        ("far future", _batch([_result(start_ns=NOW + 400 * 86400 * 10**9)]), 422, AUTH),
        ("far past", _batch([_result(start_ns=86400 * 10**9)]), 422, AUTH),
        ("control characters in a label", _batch(city="li\x1bshui\x00"), 422, AUTH),
        ("overlong label", _batch(isp="x" * 5000), 422, AUTH),
        ("overlong target name", _batch([_result(target={"name": "t" * 300, "address": "a"})]), 422, AUTH),
        ("control characters in a target", _batch([_result(target={"name": "a\nb", "address": "a"})]), 422, AUTH),
        ("invalid UTF-8", b'{"probe_id": "\xff\xfe", "batch_id": "x"}', 400, AUTH),
        ("not JSON", b"<xml/>", 400, AUTH),
        ("empty", b"", 400, AUTH),
        ("form post", b"a=b", 415, {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}),
        ("unknown encoding", good, 415, {**AUTH, "Content-Encoding": "br"}),
        ("another probe's batch", _batch(probe_id="someone-else"), 403, AUTH),
        ("no token", good, 401, {"Content-Type": "application/json"}),
        ("10 000 invented targets", _batch(invented), 422, AUTH),
        ("more results than the wire allows", _batch([_result(seq=i + 1) for i in range(10_001)]), 422, AUTH),
    ]
    return [Hostile(name, body, status, headers) for name, body, status, headers in cases]


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    workdir = tmp_path_factory.mktemp("hostile")
    processes = Processes(workdir)
    running = Collector(processes, workdir, tokens={PROBE: TOKEN}, extra=chaos.UNLIMITED)
    try:
        running.start()
        yield running
    finally:
        processes.stop_all()


def _post(port: int, case: Hostile) -> tuple[int, bytes]:
    """One request on a connection of its own (a refusal may close the connection before its body is read)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/api/v1/results", body=case.body, headers=case.headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("case", corpus(), ids=lambda case: case.name)
def test_hostile_request_gets_a_clear_4xx(collector: Collector, case: Hostile) -> None:
    status, body = _post(collector.port, case)
    assert status == case.status, body[:300]
    assert json.loads(body)["error"]  # a reason a person can read
    assert "Traceback" not in collector.processes.log(collector.name)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_hostile_requests_by_the_ten_thousand_leave_memory_where_it_was(collector: Collector) -> None:
    small = [case for case in corpus() if len(case.body) < 256 * 1024]  # the big ones each take a second
    for case in itertools.islice(itertools.cycle(small), 500):  # warm-up: caches, allocator arenas
        _post(collector.port, case)
    before = _rss_bytes(collector.process.pid)
    statuses: set[int] = set()
    for case in itertools.islice(itertools.cycle(small), REQUESTS_FOR_MEMORY):
        statuses.add(_post(collector.port, case)[0])
    after = _rss_bytes(collector.process.pid)
    print(f"\ncollector RSS before {before / 2**20:.1f} MB, after {REQUESTS_FOR_MEMORY} hostile requests "
          f"{after / 2**20:.1f} MB")  # fmt: skip
    assert statuses <= set(range(400, 500)), statuses
    assert after - before < RSS_GROWTH_LIMIT_BYTES
    assert "Traceback" not in collector.processes.log(collector.name)
