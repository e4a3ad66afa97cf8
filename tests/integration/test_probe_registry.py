"""The probe registry with a real collector: the config's probes imported, `probes list|revoke|rotate`
from another process, and a revocation that refuses the probe's next push without a restart."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from qiancheng.core.result import Result, Target
from qiancheng.core.wire import Batch, encode_batch
from tests.conftest import PYTHON, Processes
from tests.integration.helpers import Collector

TOKENS = {"city-a-01": "token-for-city-a-0123456789abcdef", "city-b-01": "token-for-city-b-0123456789abcdef",
          "city-c-01": "token-for-city-c-0123456789abcdef"}


def _push(collector: Collector, probe: str, batch_id: str) -> tuple[int, dict[str, object]]:
    result = Result(kind="icmp", target=Target(name="edge-1", address="198.18.0.1", target_class="edge"),
                    start_ns=time.time_ns() - 10**9, duration_seconds=0.2, success=True, seq=int(batch_id[-1]),
                    figures={"packets_sent": 5.0, "packets_received": 5.0, "loss_ratio": 0.0})  # fmt: skip
    batch = Batch(probe_id=probe, batch_id=f"registry-test-{batch_id}", results=[result], city="lishui", isp="chinatelecom")
    request = urllib.request.Request(collector.url + "/api/v1/results", data=encode_batch(batch), method="POST",
                                     headers={"Authorization": f"Bearer {TOKENS[probe]}",
                                              "Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _fleet(collector: Collector, query: str = "") -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"{collector.url}/api/v1/probes{query}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _probes(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "qiancheng.collector.main", "--config", str(config), "probes", *args],
                          capture_output=True, text=True, timeout=60)


def test_revoked_from_the_command_line_refused_on_the_next_push(processes: Processes, tmp_path: Path) -> None:
    collector = Collector(processes, tmp_path, TOKENS)
    collector.start()
    config = tmp_path / "collector.yaml"
    assert (tmp_path / "collector.registry.db").exists()  # beside the results, store.registry unset
    assert _push(collector, "city-a-01", "b1")[0] == 200

    listed = _probes(config, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["id"], r["source"], r["state"]) for r in rows] == [("city-a-01", "config", "active"),
                                                                  ("city-b-01", "config", "active"),
                                                                  ("city-c-01", "config", "active")]
    table = _probes(config, "list")
    assert table.stdout.splitlines()[0].split() == ["ID", "CITY", "ISP", "SOURCE", "STATE", "CHANGED"]

    revoked = _probes(config, "revoke", "city-a-01")
    assert revoked.returncode == 0 and "revoked" in revoked.stderr
    status, body = _push(collector, "city-a-01", "b2")
    assert status == 403 and "revoked" in str(body["error"])
    assert _push(collector, "city-b-01", "b3")[0] == 200  # the others go on

    status, fleet = _fleet(collector)
    assert status == 200
    assert [(p["id"], p["state"]) for p in fleet["probes"]] == [  # type: ignore[index, union-attr]
        ("city-a-01", "revoked"), ("city-b-01", "ok"), ("city-c-01", "never")]
    assert fleet["counts"] == {"ok": 1, "stale": 0, "never": 1, "revoked": 1}
    status, ok = _fleet(collector, "?state=ok&city=lishui")
    assert [p["id"] for p in ok["probes"]] == ["city-b-01"]  # type: ignore[index, union-attr]
    time.sleep(0.05)
    status, stale = _fleet(collector, "?stale_after=0.01")
    assert stale["counts"]["stale"] == 1  # type: ignore[index]
    status, refused = _fleet(collector, "?state=asleep")
    assert status == 400 and refused["field"] == "state"

    rotated = _probes(config, "rotate", "city-b-01")
    assert rotated.returncode == 2 and "from the config" in rotated.stderr
    absent = _probes(config, "revoke", "nobody")
    assert absent.returncode == 2 and "no probe 'nobody'" in absent.stderr

    # a restart imports the config again: the revocation stands, and the log says so
    processes.stop_all()
    collector.start()
    assert _push(collector, "city-a-01", "b4")[0] == 403
    assert "config_probe_revoked" in processes.log("collector") and "probe=city-a-01" in processes.log("collector")
    assert sorted(collector.stored()) == [("city-a-01", 1), ("city-b-01", 3)]
