"""Chaos on loopback with real processes: the collector SIGKILLed at 10 random moments while three
probes push continuously, probes SIGKILLed mid-upload three times; every result each probe measured is
stored exactly once (tests/integration/chaos.py does the run and keeps the books)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Processes
from tests.integration import chaos


def test_chaos_collector_and_probe_kills_lose_and_double_nothing(processes: Processes, tmp_path: Path) -> None:
    counts = chaos.run(processes, tmp_path, probes=3, collector_kills=10, probe_kills=3)
    print("\n" + "\n".join(counts.lines()))
    assert (counts.collector_kills, counts.probe_kills) == (10, 3)
    for probe in counts.probes:
        assert probe.measured >= 50, probe  # the probes did push continuously
        assert (probe.lost, probe.duplicated, probe.dropped) == (0, 0, 0), probe
        assert probe.in_spool == 0, f"{probe.probe}: results left in the spool after a clean stop"
        assert probe.stored == probe.measured, probe
