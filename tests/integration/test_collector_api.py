"""The collector as a real process on loopback: ingest, refusals, metrics, restart, durability.

Every request goes to 127.0.0.1. Batches are built with the wire format's own Structs.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qiancheng.collector.registry import hash_token
from qiancheng.core.result import Hop, Result, Target
from qiancheng.core.stats import train_stats
from qiancheng.core.wire import Batch, encode_batch
from tests.conftest import Processes, free_port, script, wait_tcp
from tests.integration.helpers import require_tool

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
S = 1_000_000_000
TOKENS = {"city-a-01": "token-for-city-a-0123456789abcdef", "city-b-01": "token-for-city-b-0123456789abcdef"}
EDGE = Target(name="lishui-edge", address="127.0.0.1", target_class="edge")
ECHO = Target(name="edge-echo", address="127.0.0.1:9312", target_class="edge")
POOL = Target(name="pool-web", address="http://127.0.0.1:9311/ping", target_class="cloud_pool")
RESOLVER = Target(name="resolver", address="127.0.0.1:5353", target_class="dns")


# -- realistic results -----------------------------------------------------------------------------------


def icmp(seq: int, start_ns: int, samples: list[float | None] | None = None) -> Result:
    samples = samples if samples is not None else [0.0021, 0.0019, 0.0024, None, 0.0020, 0.0022, 0.0018, 0.0030, 0.0021, 0.0019]
    stats = train_stats(samples)
    ok = stats.received > 0
    return Result(kind="icmp", target=EDGE, start_ns=start_ns, duration_seconds=1.0, success=ok,
                  error=None if ok else "loss", figures=stats.figures(), samples=samples, seq=seq)  # fmt: skip


def tcp(seq: int, start_ns: int) -> Result:
    samples: list[float | None] = [0.0004, 0.0005, 0.0004]
    return Result(kind="tcp", target=ECHO, start_ns=start_ns, duration_seconds=0.4, success=True,
                  figures=train_stats(samples).figures(), samples=samples, seq=seq)  # fmt: skip


def dns(seq: int, start_ns: int) -> Result:
    return Result(kind="dns", target=RESOLVER, start_ns=start_ns, duration_seconds=0.0012, success=True,
                  figures={"lookup_seconds": 0.0012, "answer_count": 1.0, "rcode_value": 0.0},
                  info={"rcode": "NOERROR"}, seq=seq)  # fmt: skip


def http(seq: int, start_ns: int) -> Result:
    return Result(kind="http", target=POOL, start_ns=start_ns, duration_seconds=0.0081, success=True,
                  figures={"dns_seconds": 0.0, "connect_seconds": 0.0003, "tls_seconds": 0.0, "ttfb_seconds": 0.0061,
                           "total_seconds": 0.0081, "status_code": 200.0, "bytes": 4.0},
                  info={"http_version": "1.1"}, seq=seq)  # fmt: skip


def mixed(first_seq: int, start_ns: int) -> list[Result]:
    return [icmp(first_seq, start_ns), tcp(first_seq + 1, start_ns), dns(first_seq + 2, start_ns),
            http(first_seq + 3, start_ns)]  # fmt: skip


def make_batch(batch_id: str, results: list[Result], probe: str = "city-a-01") -> Batch:
    return Batch(probe_id=probe, batch_id=batch_id, results=results, city="lishui", isp="chinatelecom",
                 labels={"site": "lishui-olt-03"},
                 stats={"spool_backlog": 0.0, "spool_dropped_total": 0.0, "measured_total": float(len(results))})  # fmt: skip


@functools.cache
def gzip_zeros(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(MiB)
    return b"".join([compressor.compress(chunk) for _ in range(size // MiB)] + [compressor.flush()])


# -- a collector process ---------------------------------------------------------------------------------


@dataclass
class RunningCollector:
    processes: Processes
    workdir: Path
    port: int = field(default_factory=free_port)
    name: str = "collector"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.workdir / "collector.db"

    def write_config(self) -> Path:
        probes = "".join(f"  - {{id: {p}, token_sha256: {hash_token(t)}}}\n" for p, t in TOKENS.items())
        path = self.workdir / "collector.yaml"
        path.write_text(
            f"listen: {{host: 127.0.0.1, port: {self.port}}}\n"
            f"store: {{backend: sqlite, path: \"{self.db}\"}}\n"
            f"probes:\n{probes}"
            # pushes in bursts (concurrency and refusal tests) without meeting the per-probe rate limits
            "limits: {max_body_bytes: 1MiB, max_results_per_batch: 500, requests_per_second: 1000, request_burst: 1000}\n"
            "log_level: debug\n"
        )
        return path

    def start(self) -> None:
        config = self.write_config()
        self.process = self.processes.start(script("qiancheng-collector"), "--config", str(config), name=self.name)
        wait_tcp(self.port)

    def stop(self, how: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(how)
        return self.process.wait(timeout=10)

    def rows(self, probe: str | None = None) -> list[tuple[str, int]]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT probe_id, seq FROM results ORDER BY probe_id, seq").fetchall()
        return [(str(p), int(s)) for p, s in rows if probe is None or p == probe]

    def rss_bytes(self) -> int:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        assert match is not None
        return int(match[1]) * 1024


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCollector]:
    """One collector for the tests that only add to it (the bad-request table, posts of fresh batches)."""
    workdir = tmp_path_factory.mktemp("collector")
    processes = Processes(workdir)
    collector = RunningCollector(processes, workdir)
    collector.start()
    try:
        yield collector
    finally:
        processes.stop_all()


@pytest.fixture
def own(processes: Processes, tmp_path: Path) -> RunningCollector:
    """A collector of the test's own, for tests that stop and restart it."""
    collector = RunningCollector(processes, tmp_path)
    collector.start()
    return collector


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        yield client


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


async def post(
    session: aiohttp.ClientSession, collector: RunningCollector, data: Any, token: str | None = TOKENS["city-a-01"],
    headers: dict[str, str] | None = None, skip: tuple[str, ...] = (),
) -> Answer:  # fmt: skip
    sent = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {}) | (headers or {})
    async with session.post(collector.url + "/api/v1/results", data=data, headers=sent, skip_auto_headers=skip) as response:
        text = await response.text()
        body = json.loads(text) if response.content_type == "application/json" else text
        return Answer(response.status, body, dict(response.headers))


async def get(session: aiohttp.ClientSession, url: str) -> Answer:
    async with session.get(url) as response:
        text = await response.text()
        body = json.loads(text) if response.content_type == "application/json" else text
        return Answer(response.status, body, dict(response.headers))


_batch_counter = iter(range(1, 1_000_000))
_seq_counter = iter(range(1, 1_000_000_000, 10))


def fresh(probe: str = "city-a-01", results: list[Result] | None = None) -> Batch:
    """A batch with a new batch_id and new seqs, so tests sharing a collector never collide."""
    seq = next(_seq_counter)
    return make_batch(f"batch-{next(_batch_counter):08d}-{probe}", results or mixed(seq, time.time_ns()), probe)


# -- the happy path --------------------------------------------------------------------------------------


async def test_batches_of_every_kind_are_stored_and_exposed(shared: RunningCollector, session: aiohttp.ClientSession) -> None:
    batch = fresh()
    answer = await post(session, shared, gzip.compress(encode_batch(batch)), headers={"Content-Encoding": "gzip"})
    assert answer.status == 200 and answer.body == {"accepted": 4, "duplicate": False, "stored": 4}
    plain = fresh("city-b-01")
    answer = await post(session, shared, encode_batch(plain), token=TOKENS["city-b-01"])
    assert answer.status == 200 and answer.body["stored"] == 4

    stored = shared.rows()
    for sent in (batch, plain):
        assert {(sent.probe_id, r.seq) for r in sent.results} <= set(stored)
    with sqlite3.connect(f"file:{shared.db}?mode=ro", uri=True) as db:
        kinds = {k for (k,) in db.execute("SELECT kind FROM results WHERE batch_id = ?", (batch.batch_id,))}
        samples = db.execute("SELECT samples FROM results WHERE batch_id = ? AND kind = 'icmp'", (batch.batch_id,)).fetchone()
    assert kinds == {"icmp", "tcp", "dns", "http"}
    assert json.loads(samples[0])[3] is None  # the lost packet is kept as a lost packet

    metrics = (await get(session, shared.url + "/metrics")).body
    series = 'city="lishui",isp="chinatelecom",kind="{kind}",probe="city-a-01",target="{target}"'
    assert re.search(r'^qiancheng_rtt_seconds_bucket\{.*kind="icmp".*le="0.003".*\} [1-9]', metrics, re.M)
    assert re.search(r'^qiancheng_rtt_seconds_count\{.*kind="tcp".*\} [1-9]', metrics, re.M)
    assert re.search(r'^qiancheng_packets_sent_total\{' + series.format(kind="icmp", target="lishui-edge"), metrics, re.M)
    assert re.search(r'^qiancheng_loss_ratio\{' + series.format(kind="icmp", target="lishui-edge") + r'.*\} 0\.1$', metrics, re.M)
    assert re.search(r'^qiancheng_http_phase_seconds\{.*phase="ttfb".*\} 0\.0061$', metrics, re.M)
    assert re.search(r'^qiancheng_dns_lookup_seconds\{.*target="resolver".*\} 0\.0012$', metrics, re.M)
    assert re.search(r'^qiancheng_test_success\{.*kind="dns".*\} 1\.0$', metrics, re.M)
    assert re.search(r'^qiancheng_probe_last_seen_timestamp_seconds\{city="lishui",isp="chinatelecom",probe="city-b-01"\}', metrics, re.M)
    assert re.search(r'^qiancheng_probe_spool_backlog\{.*probe="city-a-01"\} 0\.0$', metrics, re.M)
    assert re.search(r'^qiancheng_ingest_results_total\{outcome="stored"\} [1-9]', metrics, re.M)

    promtool = require_tool("promtool")
    lint = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    latest = (await get(session, shared.url + "/api/v1/latest?probe=city-b-01")).body
    assert {(e["result"]["target"]["name"], e["result"]["kind"]) for e in latest["results"]} == {
        ("lishui-edge", "icmp"), ("edge-echo", "tcp"), ("resolver", "dns"), ("pool-web", "http")}  # fmt: skip
    assert latest["totals"]["results"] >= 4 and latest["probes"][0]["probe"] == "city-b-01"
    only_dns = (await get(session, shared.url + "/api/v1/latest?kind=dns&probe=city-b-01")).body
    assert [e["result"]["kind"] for e in only_dns["results"]] == ["dns"]


async def test_a_repeated_batch_is_acknowledged_and_stored_once(shared: RunningCollector, session: aiohttp.ClientSession) -> None:
    batch = fresh()
    first = await post(session, shared, encode_batch(batch))
    again = await post(session, shared, gzip.compress(encode_batch(batch)), headers={"Content-Encoding": "gzip"})
    assert first.status == again.status == 200
    assert first.body["duplicate"] is False and again.body == {"accepted": 4, "duplicate": True, "stored": 0}
    seqs = [s for p, s in shared.rows("city-a-01") if s in {r.seq for r in batch.results}]
    assert sorted(seqs) == sorted(r.seq for r in batch.results)


async def test_a_result_resent_in_another_batch_is_stored_once(shared: RunningCollector, session: aiohttp.ClientSession) -> None:
    first = fresh()
    overlap = make_batch(first.batch_id + "-retry", first.results[2:] + mixed(next(_seq_counter), time.time_ns()))
    assert (await post(session, shared, encode_batch(first))).body["stored"] == 4
    answer = await post(session, shared, encode_batch(overlap))
    assert answer.status == 200 and answer.body == {"accepted": 6, "duplicate": False, "stored": 4}
    seqs = [s for _, s in shared.rows("city-a-01")]
    assert len(seqs) == len(set(seqs))


async def test_a_reused_seq_is_reported_as_a_conflict(shared: RunningCollector, session: aiohttp.ClientSession) -> None:
    first = fresh()
    assert (await post(session, shared, encode_batch(first))).body["stored"] == 4
    # the same seqs with later start times: a probe whose spool restarted numbering, not a re-send
    reused = make_batch(first.batch_id + "-reinstalled", mixed(first.results[0].seq, time.time_ns() + 60 * S))
    answer = await post(session, shared, encode_batch(reused))
    assert answer.status == 200 and answer.body["stored"] == 0
    metrics = (await get(session, shared.url + "/metrics")).body
    assert re.search(r'^qiancheng_ingest_results_total\{outcome="conflict"\} [4-9]', metrics, re.M)
    assert "seq_conflict probe=city-a-01" in shared.processes.log("collector")


async def test_concurrent_pushes_are_all_stored_exactly_once(shared: RunningCollector, session: aiohttp.ClientSession) -> None:
    before = len(shared.rows())
    batches = [fresh(probe) for probe in TOKENS for _ in range(20)]
    same = fresh()
    answers = await asyncio.gather(
        *(post(session, shared, encode_batch(b), token=TOKENS[b.probe_id]) for b in batches),
        *(post(session, shared, encode_batch(same)) for _ in range(10)),
    )
    assert all(a.status == 200 for a in answers)
    assert sum(not a.body["duplicate"] for a in answers[len(batches):]) == 1  # one of ten identical pushes stores
    assert len(shared.rows()) == before + 4 * (len(batches) + 1)


# -- refusals: every one is JSON with a reason, none is a 5xx ------------------------------------------


def _json_body(**changes: Any) -> bytes:
    body = json.loads(encode_batch(fresh()))
    body.update(changes)
    return json.dumps(body).encode()


def _result_changed(**changes: Any) -> bytes:
    body = json.loads(encode_batch(fresh()))
    body["results"][0].update(changes)
    return json.dumps(body).encode()


async def _oversize_chunks() -> AsyncIterator[bytes]:
    for _ in range(20):  # 1.25 MiB in chunks, no Content-Length: the limit must hold while streaming
        yield b" " * (64 * 1024)


@dataclass(frozen=True)
class Bad:
    status: int
    data: Callable[[], Any]
    token: str | None = TOKENS["city-a-01"]
    headers: dict[str, str] = field(default_factory=dict)
    field: str | None = None
    reason: str = ""
    skip: tuple[str, ...] = ()


BAD_REQUESTS = {
    "no token": Bad(401, lambda: encode_batch(fresh()), token=None, reason="bearer token required"),
    "wrong token": Bad(401, lambda: encode_batch(fresh()), token="not-a-token-of-anyone", reason="invalid token"),
    "basic auth": Bad(401, lambda: encode_batch(fresh()), token=None,
                      headers={"Authorization": "Basic Y2l0eS1hLTAxOnNlY3JldA=="}, reason="invalid token"),
    "token of another probe": Bad(403, lambda: encode_batch(fresh("city-b-01")), field="$.probe_id",
                                  reason="belongs to probe 'city-a-01'"),
    "bad json": Bad(400, lambda: b'{"probe_id": "city-a-01", "batch_id": ', field="$", reason="not valid JSON"),
    "empty body": Bad(400, lambda: b"", field="$", reason="not valid JSON"),
    "wrong type": Bad(422, lambda: _result_changed(start_ns="yesterday"), field="$.results[0].start_ns",
                      reason="expected `int`, got `str`"),
    "unknown field": Bad(422, lambda: _json_body(colour="red"), field="$.colour", reason="unknown field"),
    "missing field": Bad(422, lambda: b'{"probe_id": "city-a-01", "batch_id": "batch-0000001"}',
                         field="$.results", reason="missing required field"),
    "unnumbered result": Bad(422, lambda: _result_changed(seq=0), field="$.results[0].seq", reason="must be ≥ 1"),
    "too many results": Bad(413, lambda: encode_batch(make_batch("batch-too-many", [icmp(i, 1) for i in range(1, 502)])),
                            field="$.results", reason="more than 500 results"),
    "oversize body": Bad(413, lambda: b" " * (MiB + 1), reason="body exceeds 1048576 bytes"),
    "oversize chunked body": Bad(413, _oversize_chunks, reason="body exceeds 1048576 bytes"),
    "gzip bomb": Bad(413, lambda: gzip_zeros(512 * MiB), headers={"Content-Encoding": "gzip"},
                     reason="inflated body exceeds 1048576 bytes"),
    "bad gzip": Bad(400, lambda: encode_batch(fresh()), headers={"Content-Encoding": "gzip"}, reason="not valid gzip"),
    "truncated gzip": Bad(400, lambda: gzip.compress(encode_batch(fresh()))[:-20], headers={"Content-Encoding": "gzip"},
                          reason="truncated"),
    "wrong content type": Bad(415, lambda: encode_batch(fresh()), headers={"Content-Type": "text/plain"},
                              reason="Content-Type must be application/json"),
    "form post": Bad(415, lambda: b"probe_id=city-a-01", headers={"Content-Type": "application/x-www-form-urlencoded"},
                     reason="Content-Type must be application/json"),
    "unknown encoding": Bad(415, lambda: encode_batch(fresh()), headers={"Content-Encoding": "br"},
                            reason="Content-Encoding must be gzip or identity"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_bad_requests_are_refused_with_json_never_5xx(
    shared: RunningCollector, session: aiohttp.ClientSession, case: Bad
) -> None:
    before = shared.rows()
    answer = await post(session, shared, case.data(), token=case.token, headers=case.headers, skip=case.skip)
    assert answer.status == case.status, answer.body
    assert isinstance(answer.body, dict) and case.reason in answer.body["error"]
    assert answer.body.get("field") == case.field
    if case.status == 401:
        assert answer.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert shared.rows() == before  # nothing refused is stored
    assert (await get(session, shared.url + "/healthz")).status == 200  # and the collector is still up


async def test_a_gzip_bomb_leaves_the_collector_small(shared: RunningCollector, session: aiohttp.ClientSession) -> None:
    bomb = gzip_zeros(512 * MiB)
    baseline = shared.rss_bytes()
    for _ in range(3):
        answer = await post(session, shared, bomb, headers={"Content-Encoding": "gzip"})
        assert answer.status == 413
    # inflating it whole would take 512 MiB; the bounded inflater holds at most the 1 MiB limit
    assert shared.rss_bytes() - baseline < 32 * MiB
    assert shared.rss_bytes() < 256 * MiB


async def test_refusals_are_counted_in_metrics(shared: RunningCollector, session: aiohttp.ClientSession) -> None:
    await post(session, shared, encode_batch(fresh()), token=None)
    metrics = (await get(session, shared.url + "/metrics")).body
    assert re.search(r'^qiancheng_ingest_requests_total\{code="401"\} [1-9]', metrics, re.M)
    assert "batch_refused status=401" in shared.processes.log("collector")
    assert TOKENS["city-a-01"] not in shared.processes.log("collector")  # tokens never reach the log


async def test_unknown_routes_and_methods_answer_json(shared: RunningCollector, session: aiohttp.ClientSession) -> None:
    missing = await get(session, shared.url + "/api/v1/nothing")
    assert missing.status == 404 and missing.body == {"error": "Not Found"}
    wrong_method = await get(session, shared.url + "/api/v1/results")
    assert wrong_method.status == 405 and "POST" in wrong_method.headers.get("Allow", "")


# -- health and OpenAPI ---------------------------------------------------------------------------------


async def test_healthz_and_openapi_describe_the_service(shared: RunningCollector, session: aiohttp.ClientSession) -> None:
    health = await get(session, shared.url + "/healthz")
    assert health.status == 200 and health.body["status"] == "ok" and health.body["store_ok"] is True
    document = (await get(session, shared.url + "/api/v1/openapi.json")).body
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {"/api/v1/results", "/api/v1/latest", "/api/v1/paths", "/api/v1/plan", "/api/v1/enroll",
                                      "/api/v1/probes", "/api/v1/sla", "/healthz", "/metrics", "/api/v1/openapi.json"}
    post_op = document["paths"]["/api/v1/results"]["post"]
    assert {"200", "400", "401", "403", "413", "415", "422", "503"} <= set(post_op["responses"])
    assert post_op["security"] == [{"probeToken": []}]
    assert document["components"]["securitySchemes"]["probeToken"]["scheme"] == "bearer"
    schemas = document["components"]["schemas"]
    assert {"Batch", "Result", "Target", "Hop", "Ack", "ErrorBody", "Health", "LatestResponse", "PathsResponse", "Blame"} <= set(schemas)
    assert "class" in schemas["Target"]["properties"]  # the wire name, not the Python attribute
    # every $ref points at a schema that exists
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(document))
    assert refs and set(refs) <= set(schemas)


# -- process life: restart, kill -9, SIGTERM, bad config ------------------------------------------------


async def test_restart_rebuilds_latest_gauges_from_the_store(own: RunningCollector, session: aiohttp.ClientSession) -> None:
    now = time.time_ns()
    newer, late = fresh(results=mixed(500, now)), fresh(results=[icmp(100, now - 600 * S, [None] * 10)])
    assert (await post(session, own, encode_batch(newer))).status == 200
    assert (await post(session, own, encode_batch(late))).status == 200  # replayed late: must not win
    before = (await get(session, own.url + "/api/v1/latest")).body
    assert own.stop() == 0
    assert "collector_stopped" in own.processes.log(own.name)

    own.start()
    metrics = (await get(session, own.url + "/metrics")).body
    icmp_labels = 'city="lishui",isp="chinatelecom",kind="icmp",probe="city-a-01",target="lishui-edge",target_class="edge"'
    assert f"qiancheng_loss_ratio{{{icmp_labels}}} 0.1" in metrics  # the newer test, not the late 100 % loss
    assert f"qiancheng_test_success{{{icmp_labels}}} 1.0" in metrics
    assert re.search(r'^qiancheng_http_phase_seconds\{.*phase="total".*\} 0\.0081$', metrics, re.M)
    assert re.search(r'^qiancheng_probe_last_seen_timestamp_seconds\{.*probe="city-a-01"\} 1\.', metrics, re.M)
    assert (await get(session, own.url + "/api/v1/latest")).body == before
    again = await post(session, own, encode_batch(newer))
    assert again.status == 200 and again.body["duplicate"] is True  # idempotence survives the restart


async def test_paths_are_served_and_their_hops_survive_a_restart(own: RunningCollector, session: aiohttp.ClientSession) -> None:
    now = time.time_ns()
    pool = Target(name="pool", address="198.18.0.14", target_class="cloud_pool")

    def path(seq: int, start_ns: int, second: str, previous: str | None) -> Result:
        hops = [Hop(ttl=ttl, sent=10, received=10, loss_ratio=0.0, address=address, rtt_median_seconds=0.001 * ttl)
                for ttl, address in enumerate(["198.18.0.2", second, "198.18.0.14"], 1)]  # fmt: skip
        info = {"fingerprint": second.replace(".", "")[-16:].rjust(16, "0")}
        if previous:
            info["previous_fingerprint"] = previous
        return Result(kind="path", target=pool, start_ns=start_ns, duration_seconds=3.0, success=True, seq=seq, hops=hops,
                      figures={"hop_count": 3.0, "path_changes": float(previous is not None), "rtt_median_seconds": 0.003},
                      info=info)  # fmt: skip

    first = path(1, now - 600 * S, "198.18.0.6", None)
    moved = path(2, now - 300 * S, "198.18.0.18", first.info["fingerprint"])
    assert (await post(session, own, encode_batch(fresh(results=[first, moved])))).status == 200
    for query, status in (("changes=abc", 400), ("changes=1001", 400), ("changes=-1", 400), ("changes=²", 400)):
        answer = await get(session, own.url + "/api/v1/paths?" + query)
        assert answer.status == status and answer.body["field"] == "changes", (query, answer.body)
    assert own.stop() == 0
    own.start()
    [entry] = (await get(session, own.url + "/api/v1/paths?target=pool")).body["paths"]
    assert [hop["address"] for hop in entry["latest"]["result"]["hops"]] == ["198.18.0.2", "198.18.0.18", "198.18.0.14"]
    assert [c["start_ns"] for c in entry["changes"]] == [moved.start_ns]
    assert (await get(session, own.url + "/api/v1/paths?target=pool&changes=0")).body["paths"][0]["changes"] == []
    metrics = (await get(session, own.url + "/metrics")).body
    # the per-hop gauges are rebuilt from the stored hops
    assert re.search(r'^qiancheng_path_hop_rtt_seconds\{address="198\.18\.0\.18",.*hop="2".*\} 0\.002$', metrics, re.M)


async def test_an_acknowledged_batch_survives_kill_9(own: RunningCollector, session: aiohttp.ClientSession) -> None:
    batches = [fresh() for _ in range(10)]
    for batch in batches:
        assert (await post(session, own, encode_batch(batch))).status == 200
    own.stop(signal.SIGKILL)
    expected = {("city-a-01", r.seq) for b in batches for r in b.results}
    assert expected <= set(own.rows())


async def test_sigterm_under_load_loses_no_acknowledged_batch(
    own: RunningCollector, session: aiohttp.ClientSession
) -> None:
    acknowledged: list[Batch] = []

    async def push() -> None:
        while True:
            batch = fresh(results=[icmp(next(_seq_counter), time.time_ns()) for _ in range(100)])
            try:
                answer = await post(session, own, encode_batch(batch))
            except aiohttp.ClientError:
                return  # the collector stopped listening
            assert answer.status == 200, answer.body  # never a 5xx while stopping
            acknowledged.append(batch)

    pushers = [asyncio.create_task(push()) for _ in range(8)]
    await asyncio.sleep(0.5)
    assert own.process is not None
    own.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*pushers), timeout=20)
    assert own.process.wait(timeout=10) == 0
    assert len(acknowledged) > 8
    expected = {("city-a-01", r.seq) for b in acknowledged for r in b.results}
    assert expected <= set(own.rows())


def test_bad_config_exits_2_naming_the_field_before_listening(processes: Processes, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "collector.yaml"
    config.write_text(f"listen: {{host: 127.0.0.1, port: {port}}}\nprobes:\n  - {{id: p1, token_sha256: nothex}}\n")
    process = processes.start(script("qiancheng-collector"), "--config", str(config), name="bad")
    assert process.wait(timeout=10) == 2
    assert f"{config}:3: probes[0].token_sha256: expected the SHA-256" in processes.log("bad")


def test_an_unusable_store_path_is_reported_like_a_config_error(processes: Processes, tmp_path: Path) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text(f"store:\n  path: {tmp_path}/missing/dir/collector.db\nlisten: {{port: {free_port()}}}\n")
    process = processes.start(script("qiancheng-collector"), "--config", str(config), name="bad-store")
    assert process.wait(timeout=10) == 2
    assert f"{config}:2: store.path: cannot open the store" in processes.log("bad-store")


def test_a_port_in_use_is_reported(processes: Processes, tmp_path: Path, own: RunningCollector) -> None:
    config = tmp_path / "second.yaml"
    config.write_text(f"listen: {{host: 127.0.0.1, port: {own.port}}}\nstore: {{path: \"{tmp_path}/second.db\"}}\n")
    process = processes.start(script("qiancheng-collector"), "--config", str(config), name="second")
    assert process.wait(timeout=10) == 2
    assert "listen: cannot listen on 127.0.0.1" in processes.log("second")


def test_sigterm_stops_cleanly(own: RunningCollector) -> None:
    started = time.monotonic()
    assert own.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    log = own.processes.log(own.name)
    assert "collector_stopping" in log and "store_closed" in log and "collector_stopped" in log
    assert "Traceback" not in log


def test_hash_token_command(tmp_path: Path) -> None:
    token = "a-random-token-of-forty-three-characters-xx"
    out = subprocess.run([script("qiancheng-collector"), "hash-token"], input=token + "\n", capture_output=True,
                         text=True, check=True, env={**os.environ})  # fmt: skip
    assert out.stdout.strip() == hash_token(token)
