"""The issue-5 figures through a real collector on loopback: a batch of throughput, STAMP and CDN results
POSTed and read back from /metrics; and a real probe whose ICMP trains carry the voice estimate and whose
HTTP tests read a cache's headers, judged by the collector's SLA (GET /api/v1/sla). About 10 s."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from qiancheng.core.result import Result, Target
from qiancheng.core.stats import train_stats
from qiancheng.core.wire import Batch, encode_batch
from tests.conftest import PYTHON, Processes
from tests.integration.cache_edge import cache_like_server
from tests.integration.helpers import Collector, http_get, probe_config, require_root, wait_for

pytestmark = pytest.mark.integration

S = 1_000_000_000
T0 = 1_790_000_000 * S
TOKEN = "token-experience-0123456789abcdef"
OBJECT = Target(name="cdn-object", address="http://127.0.0.1:9/seg.ts", target_class="cdn")
REFLECTOR = Target(name="stamp-edge", address="127.0.0.1:8620", target_class="edge")


def samples_of(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition: (name, labels) → value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def find(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> list[float]:
    """Values of the samples called `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return [value for (sample, have), value in samples.items() if sample == name and wanted <= have]


def post(collector: Collector, batch: Batch) -> dict[str, Any]:
    request = urllib.request.Request(
        collector.url + "/api/v1/results", data=encode_batch(batch), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def throughput(kind: str, seq: int) -> Result:
    return Result(
        kind=kind, target=OBJECT, start_ns=T0 + seq * S, duration_seconds=12.0, success=True, seq=seq,
        figures={"throughput_bits_per_second": 94.1e6, "throughput_p90_bits_per_second": 95.3e6, "bytes": 117_625_000.0,
                 "bytes_total": 140_000_000.0, "tcp_retransmits": 23.0, "idle_rtt_seconds": 0.0004,
                 "loaded_rtt_seconds": 0.0612, "bufferbloat_seconds": 0.0608, "responsiveness_rpm": 980.0,
                 "cdn_cache_hit": 0.0, "cdn_age_seconds": 0.0},
        info={"url": OBJECT.address, "cache_status": "miss", "cache_header": "x-cache", "edge": "cache-pvg-7-PVG"},
    )  # fmt: skip


def stamp(seq: int) -> Result:
    samples: list[float | None] = [0.0102, 0.0110, None, 0.0104]
    figures = train_stats(samples).figures() | {
        "reordered": 1.0, "forward_delay_median_seconds": 0.0061, "backward_delay_median_seconds": 0.0043,
        "clock_error_seconds": 0.00025, "clock_synchronized": 1.0, "mos": 4.21, "r_factor": 85.2,
    }  # fmt: skip
    return Result(kind="stamp", target=REFLECTOR, start_ns=T0 + seq * S, duration_seconds=1.0, success=True,
                  figures=figures, samples=samples, seq=seq)  # fmt: skip


def test_a_batch_of_issue5_figures_becomes_metrics(processes: Processes, tmp_path: Path) -> None:
    collector = Collector(processes, tmp_path, tokens={"exp-1": TOKEN})
    collector.start()
    batch = Batch(probe_id="exp-1", batch_id="exp-batch-1", city="lishui", isp="ct",
                  results=[throughput("download", 1), throughput("upload", 2), stamp(3), stamp(4)])  # fmt: skip
    assert post(collector, batch)["stored"] == 4
    metrics = samples_of(collector.metrics())
    down = {"probe": "exp-1", "target": "cdn-object", "kind": "download", "direction": "download"}
    up = {"probe": "exp-1", "target": "cdn-object", "kind": "upload", "direction": "upload"}
    assert find(metrics, "qiancheng_throughput_bits_per_second", **down) == [94.1e6]
    assert find(metrics, "qiancheng_throughput_p90_bits_per_second", **up) == [95.3e6]
    assert find(metrics, "qiancheng_throughput_bytes", **down) == [117_625_000.0]
    assert find(metrics, "qiancheng_throughput_retransmits", **up) == [23.0]
    assert find(metrics, "qiancheng_idle_rtt_seconds", **down) == [0.0004]
    assert find(metrics, "qiancheng_loaded_rtt_seconds", **down) == [0.0612]
    assert find(metrics, "qiancheng_bufferbloat_seconds", **up) == [0.0608]
    assert find(metrics, "qiancheng_responsiveness_rpm", **up) == [980.0]
    assert find(metrics, "qiancheng_cdn_cache_hit", target="cdn-object", kind="download") == [0.0]
    assert find(metrics, "qiancheng_cdn_age_seconds", target="cdn-object", kind="download") == [0.0]
    assert find(metrics, "qiancheng_cdn_info", kind="download", cache_status="miss", edge="cache-pvg-7-PVG") == [1.0]
    assert find(metrics, "qiancheng_cdn_info", kind="upload") == []  # upload is no CDN kind

    stamp_series = {"probe": "exp-1", "target": "stamp-edge", "kind": "stamp"}
    assert find(metrics, "qiancheng_one_way_delay_seconds", **stamp_series, direction="forward") == [0.0061]
    assert find(metrics, "qiancheng_one_way_delay_seconds", **stamp_series, direction="backward") == [0.0043]
    assert find(metrics, "qiancheng_clock_error_seconds", **stamp_series) == [0.00025]
    assert find(metrics, "qiancheng_packets_reordered_total", **stamp_series) == [2.0]  # both tests counted
    assert find(metrics, "qiancheng_mos_estimate", **stamp_series) == [4.21]
    assert find(metrics, "qiancheng_r_factor_estimate", **stamp_series) == [85.2]
    assert find(metrics, "qiancheng_rtt_seconds_count", **stamp_series) == [6.0]


# ---- a real probe: ICMP with the voice estimate, HTTP against a cache's headers, judged by the SLA -------


@pytest.fixture
def cache_server() -> Iterator[str]:
    with cache_like_server() as url:
        yield url


@dataclass
class JudgingCollector(Collector):
    """A collector judging two voice profiles over a 60 s window every second: MOS ≥ 4.0 and MOS ≥ 4.42."""

    def write_config(self) -> Path:
        path = super().write_config()
        profiles = self.workdir / "sla.yaml"
        profiles.write_text(
            "profiles:\n"
            "  voice_good: {objectives: {mos: {min: 4.0}}}\n"
            "  voice_beyond_g711: {objectives: {mos: {min: 4.42}}}\n"  # above the 4.41 a perfect G.711 path gets
            "assign:\n"
            "  - match: {target_class: edge}\n"
            "    profiles: [voice_good, voice_beyond_g711]\n"
        )
        with path.open("a") as config:
            config.write(f"sla: {{profiles: \"{profiles}\", windows: [60s], interval: 1s, open_after: 1, close_after: 1}}\n")
        return path

    def mos_objectives(self) -> dict[str, dict[str, Any]]:
        body = json.loads(http_get(self.url + "/api/v1/sla?target=loopback")[1])
        return {o["profile"]: o for o in body["objectives"] if o["indicator"] == "mos"}


def test_real_probe_icmp_voice_estimate_and_cdn_cache_reach_metrics_and_sla(
    processes: Processes, tmp_path: Path, cache_server: str
) -> None:
    require_root()
    collector = JudgingCollector(processes, tmp_path, tokens={"exp-2": TOKEN})
    collector.start()
    targets = (
        "  - {name: loopback, address: 127.0.0.1, class: edge, kinds: [icmp]}\n"
        f"  - {{name: cdn-object, address: '{cache_server}', class: cdn, kinds: [http]}}\n"
    )
    config = probe_config(tmp_path / "exp-2.yaml", "exp-2", TOKEN, collector, targets)
    processes.start(PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(config), name="exp-2")

    def judged() -> dict[str, dict[str, Any]] | None:
        found = collector.mos_objectives()
        ready = len(found) == 2 and all(o["status"] in ("ok", "breach") for o in found.values())
        return found if ready else None

    wait_for(lambda: find(samples_of(collector.metrics()), "qiancheng_cdn_info", target="cdn-object"), 20, "cdn info")
    wait_for(judged, 20, "the voice objectives judged")
    metrics = samples_of(collector.metrics())

    # loopback: RTT/2 well under a millisecond, no jitter to speak of, no loss → R 93.2, MOS 4.41 (G.107)
    echo = {"probe": "exp-2", "target": "loopback", "kind": "icmp"}
    [mos] = find(metrics, "qiancheng_mos_estimate", **echo)
    [r_factor] = find(metrics, "qiancheng_r_factor_estimate", **echo)
    assert mos == pytest.approx(4.409, abs=0.002) and r_factor == pytest.approx(93.2, abs=0.05)

    web = {"probe": "exp-2", "target": "cdn-object", "kind": "http"}
    assert find(metrics, "qiancheng_cdn_cache_hit", **web) == [1.0]
    assert find(metrics, "qiancheng_cdn_age_seconds", **web) == [42.0]
    assert find(metrics, "qiancheng_cdn_info", **web, cache_status="hit", edge="cache-lishui-edge1-HGH") == [1.0]
    assert find(metrics, "qiancheng_cdn_info", **web, cache_status="hit") == [1.0]  # one series, whatever the values

    objectives = judged()
    assert objectives is not None
    good, beyond = objectives["voice_good"], objectives["voice_beyond_g711"]
    assert good["status"] == "ok" and good["windows"][0]["value"] == pytest.approx(4.409, abs=0.002), good
    assert good["windows"][0]["results"] >= 1 and good["kind"] == "icmp"
    assert beyond["status"] == "breach" and beyond["threshold"] == 4.42, beyond
