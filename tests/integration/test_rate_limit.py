"""A real probe against a rate-limited collector: it is told 429 with Retry-After, waits as told (no
tight retry loop), and loses nothing: every result it measured is stored or still in its spool."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.conftest import PYTHON, Processes
from tests.integration.helpers import Collector, ingest_answers, probe_config, spool_counters, wait_for

PUSH_SECONDS = 8.0


def test_rate_limit_probe_waits_as_told_and_loses_nothing(processes: Processes, tmp_path: Path) -> None:
    collector = Collector(processes, tmp_path, tokens={"p1": "token-rate-limited-01"},
                          extra="limits: {requests_per_second: 0.5, request_burst: 1}\n")  # fmt: skip
    collector.start()
    targets = "".join(f"  - {{name: t{i}, address: '127.0.0.1:{collector.port}', kinds: {{tcp: {{count: 1}}}}}}\n"
                      for i in range(3))  # fmt: skip
    config = probe_config(tmp_path / "p1.yaml", "p1", "token-rate-limited-01", collector, targets, interval="1s")
    probe = processes.start(PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(config), name="p1")
    started = time.monotonic()
    wait_for(lambda: ingest_answers(collector.metrics(), 429) >= 1, 15, "a 429 from the collector")
    time.sleep(max(0.0, PUSH_SECONDS - (time.monotonic() - started)))
    metrics = collector.metrics()
    elapsed = time.monotonic() - started
    pushes = ingest_answers(metrics, 200) + ingest_answers(metrics, 429)
    # the probe batches every 300 ms; told to wait 2 s after each 429, it pushes about once a second at
    # most; a probe ignoring Retry-After would retry within its 100 ms backoff, ten times a second
    assert pushes <= elapsed * 1.5 + 2, f"{pushes} pushes in {elapsed:.1f} s"
    assert ingest_answers(metrics, 200) >= 2
    probe.send_signal(signal.SIGTERM)
    assert probe.wait(timeout=10) == 0
    measured, backlog = spool_counters(tmp_path / "p1-spool.db")
    stored = len(collector.stored())
    assert measured > 0 and stored + backlog == measured, (measured, stored, backlog)
    assert "upload_failed" in processes.log("p1") and "http 429" in processes.log("p1")
