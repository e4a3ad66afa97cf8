"""The probe as an operator runs it: `check` and `run` refuse a bad config before starting, SIGHUP applies
a new config without losing spooled results (and keeps the old one if the new one is bad), and
`once` prints one JSON object per target."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import PYTHON, Processes
from tests.integration.helpers import Collector, Responder, probe_config, wait_for

TESTDATA = Path(__file__).parents[1] / "testdata"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "qiancheng.probes.cli", *args], capture_output=True, text=True, timeout=60)


def test_a_bad_config_exits_2_naming_file_line_and_field_before_anything_starts(tmp_path: Path) -> None:
    bad = TESTDATA / "probe_bad_interval.yaml"
    for command in ("check", "run"):
        started = time.monotonic()
        done = _cli(command, "--config", str(bad))
        assert done.returncode == 2, done.stderr
        assert time.monotonic() - started < 10
        first = done.stderr.strip().splitlines()[0]
        assert f"{bad}:" in first and "interval" in first, first
    assert _cli("check", "--config", str(TESTDATA / "probe_minimal.yaml")).returncode == 0


def test_sighup_applies_a_new_config_and_keeps_the_spool(processes: Processes, tmp_path: Path) -> None:
    responder = Responder(processes)
    responder.start()
    collector = Collector(processes, tmp_path, tokens={"hup-probe": "token-hup"})
    collector.start()
    echo = f"  - {{name: echo, address: '127.0.0.1:{responder.echo_port}', kinds: [tcp]}}\n"
    web = f"  - {{name: web, address: 'http://127.0.0.1:{responder.http_port}/ping', kinds: [http]}}\n"
    config = probe_config(tmp_path / "probe.yaml", "hup-probe", "token-hup", collector, echo)
    probe = processes.start(PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(config), name="probe")
    wait_for(lambda: collector.kinds_stored() == {"tcp"}, 15, "tcp results")

    probe_config(config, "hup-probe", "token-hup", collector, echo + web)
    probe.send_signal(signal.SIGHUP)
    wait_for(lambda: collector.kinds_stored() == {"tcp", "http"}, 15, "http results after SIGHUP")

    # a bad config on SIGHUP is refused and the running one goes on
    good = config.read_text()
    config.write_text(good.replace("interval: 1s", "interval: nonsense", 1))
    probe.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload_refused" in processes.log("probe"), 10, "reload_refused in the log")
    before = len(collector.stored())
    wait_for(lambda: len(collector.stored()) > before + 2, 10, "results still flowing")
    assert probe.poll() is None

    probe.send_signal(signal.SIGTERM)
    assert probe.wait(timeout=6) == 0
    seqs = [seq for _, seq in collector.stored()]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gap or repeat across reloads"


def test_once_prints_one_json_object_per_target(processes: Processes) -> None:
    responder = Responder(processes)
    responder.start()
    tcp = _cli("once", "--json", "--kind", "tcp", "--count", "3", "--packet-interval", "10ms",
               f"127.0.0.1:{responder.echo_port}", f"127.0.0.1:{responder.http_port}")
    http = _cli("once", "--json", f"http://127.0.0.1:{responder.http_port}/ping")
    dns = _cli("once", "--json", "--kind", "dns", "--query-name", "www.qiancheng.test", f"127.0.0.1:{responder.dns_port}")
    assert (tcp.returncode, http.returncode, dns.returncode) == (0, 0, 0), tcp.stderr + http.stderr + dns.stderr
    tcp_results = [json.loads(line) for line in tcp.stdout.splitlines()]
    assert [r["target"]["address"] for r in tcp_results] == [f"127.0.0.1:{responder.echo_port}", f"127.0.0.1:{responder.http_port}"]
    assert all(r["kind"] == "tcp" and r["success"] and r["figures"]["packets_received"] == 3 for r in tcp_results)
    [page] = [json.loads(line) for line in http.stdout.splitlines()]
    assert page["kind"] == "http" and page["success"] and page["figures"]["status_code"] == 200
    [lookup] = [json.loads(line) for line in dns.stdout.splitlines()]
    assert lookup["kind"] == "dns" and lookup["info"]["rcode"] == "NOERROR" and lookup["figures"]["answer_count"] >= 1
