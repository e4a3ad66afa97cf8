"""No result is lost: the collector is stopped and restarted twice and the probe is killed with -9.

Afterwards every probe's stored `seq` runs from its first without a gap or a repeat, and the count is
what the probe measured.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.conftest import PYTHON, Processes
from tests.integration.helpers import Collector, Responder, probe_config, spool_counters, wait_for


def test_outages_restarts_and_kill9_lose_nothing(processes: Processes, tmp_path: Path) -> None:
    responder = Responder(processes)
    responder.start()
    tokens = {"city-a-01": "token-a", "city-b-01": "token-b"}
    collector = Collector(processes, tmp_path, tokens=tokens)
    collector.start()
    targets = f"  - {{name: echo, address: '127.0.0.1:{responder.echo_port}', kinds: [tcp]}}\n" \
              f"  - {{name: web, address: 'http://127.0.0.1:{responder.http_port}/ping', kinds: [http]}}\n"
    configs = {
        probe: probe_config(tmp_path / f"{probe}.yaml", probe, token, collector, targets, city=probe[:6], interval="1s")
        for probe, token in tokens.items()
    }

    def start_probe(probe: str) -> object:
        return processes.start(PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(configs[probe]), name=probe)

    probes = {probe: start_probe(probe) for probe in tokens}
    wait_for(lambda: len(collector.stored()) >= 8, 15, "first results stored")

    # outage 1: a clean stop; outage 2: kill -9 (the collector loses nothing it acknowledged)
    for how in (signal.SIGTERM, signal.SIGKILL):
        collector.process.send_signal(how)
        collector.process.wait(timeout=10)
        time.sleep(2.5)  # the probes keep measuring into their spools
        collector.start()
        before = len(collector.stored())
        wait_for(lambda: len(collector.stored()) > before, 15, "uploads resume after the restart")

    # the probe killed with -9 restarts from its spool
    victim = probes["city-a-01"]
    victim.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
    victim.wait(timeout=5)  # type: ignore[attr-defined]
    time.sleep(1)
    probes["city-a-01"] = start_probe("city-a-01")
    time.sleep(2)

    for process in probes.values():
        process.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        assert process.wait(timeout=8) == 0  # type: ignore[attr-defined]

    stored = collector.stored()
    for probe in tokens:
        seqs = [seq for p, seq in stored if p == probe]
        measured, backlog = spool_counters(tmp_path / f"{probe}-spool.db")
        assert backlog == 0, f"{probe}: {backlog} results still in the spool after a clean stop"
        assert seqs, f"{probe}: nothing stored"
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{probe}: gap or repeat in seq"
        assert len(seqs) == measured, f"{probe}: measured {measured}, stored {len(seqs)}"
        assert measured >= 10
