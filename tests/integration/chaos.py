"""A fault run with real processes: probes push continuously while the collector is SIGKILLed and
restarted on its store at random moments and probes are SIGKILLed mid-upload and restarted; afterwards
each probe's results are counted, by `seq`, against what its own spool says it measured.

Used by tests/integration/test_chaos.py (which asserts) and bench/fault_counts.py (which prints).
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PYTHON, Processes
from tests.integration.helpers import Collector, Responder, probe_config, wait_for

#: per-probe limits far above what the run pushes: the run proves delivery, not the limits
UNLIMITED = "limits: {requests_per_second: 10000, request_burst: 10000, results_per_second: 1000000, result_burst: 1000000}\n"


@dataclass(frozen=True)
class ProbeCounts:
    """One probe's books after the run; `lost` and `duplicated` must be 0."""

    probe: str
    first_seq: int  # the first seq its spool gave
    measured: int  # results its spool committed (meta.measured_total), over every restart
    stored: int  # rows in the collector's store
    in_spool: int  # still waiting in the spool after the final clean stop
    dropped: int  # dropped by the spool's bound (counted; none expected here)
    lost: int  # seqs the spool numbered that are neither stored, nor waiting, nor dropped
    duplicated: int  # stored rows repeating a measurement (same target, kind and start) of another row


@dataclass(frozen=True)
class ChaosCounts:
    collector_kills: int
    probe_kills: int
    uploads_cut: int  # pushes the probes saw fail (a collector killed or down): each retried later
    seconds: float
    probes: tuple[ProbeCounts, ...]

    @property
    def lost(self) -> int:
        return sum(p.lost for p in self.probes)

    @property
    def duplicated(self) -> int:
        return sum(p.duplicated for p in self.probes)

    def lines(self) -> list[str]:
        rows = [f"  {p.probe}: measured {p.measured}, stored {p.stored}, in spool {p.in_spool}, dropped {p.dropped}, "
                f"lost {p.lost}, duplicated {p.duplicated}" for p in self.probes]  # fmt: skip
        measured = sum(p.measured for p in self.probes)
        stored = sum(p.stored for p in self.probes)
        return [*rows, f"kills: collector {self.collector_kills}, probes {self.probe_kills} in {self.seconds:.0f} s "
                       f"({self.uploads_cut} pushes cut); results measured {measured}, stored {stored}, "
                       f"lost {self.lost}, duplicated {self.duplicated}"]


def _spool_books(path: Path) -> tuple[int, int, int, set[int]]:
    """(measured_total, last_seq, dropped_total, seqs waiting) read straight from a stopped probe's spool."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        meta = dict(db.execute("SELECT key, value FROM meta"))
        waiting = {int(seq) for (seq,) in db.execute("SELECT seq FROM results")}
    return int(meta["measured_total"]), int(meta["last_seq"]), int(meta["dropped_total"]), waiting


def stored_rows(db_path: Path, probe: str) -> list[tuple[int, str, str, int]]:
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return [(int(seq), str(target), str(kind), int(start)) for seq, target, kind, start in db.execute(
            "SELECT seq, target_name, kind, start_ns FROM results WHERE probe_id = ? ORDER BY seq", (probe,))]


def count(collector: Collector, workdir: Path, probe: str) -> ProbeCounts:
    """The books of one stopped probe against the collector's store."""
    measured, last_seq, dropped, waiting = _spool_books(workdir / f"{probe}-spool.db")
    numbered = set(range(last_seq - measured + 1, last_seq + 1))  # a spool numbers without gaps
    rows = stored_rows(collector.db, probe)
    stored = {seq for seq, *_ in rows}
    measurements = [(target, kind, start) for _, target, kind, start in rows]
    duplicated = len(measurements) - len(set(measurements)) + len(stored - numbered)
    lost = len(numbered - stored - waiting) - dropped
    return ProbeCounts(probe, last_seq - measured + 1, measured, len(rows), len(waiting), dropped, lost, duplicated)


def run(processes: Processes, workdir: Path, *, probes: int = 3, collector_kills: int = 10, probe_kills: int = 3,
        targets: int = 10, seed: int = 2026) -> ChaosCounts:  # fmt: skip
    """Push, kill, restart; stop everything cleanly and return each probe's books."""
    rng = random.Random(seed)
    responder = Responder(processes)
    responder.start()
    names = [f"chaos-{index:02d}" for index in range(probes)]
    collector = Collector(processes, workdir, tokens={name: f"token-{name}-0123456789" for name in names}, extra=UNLIMITED)
    collector.start()
    target_lines = "".join(f"  - {{name: echo-{i}, address: '127.0.0.1:{responder.echo_port}', kinds: {{tcp: {{count: 1, timeout: 150ms}}}}}}\n"
                           for i in range(targets))  # fmt: skip
    configs = {name: probe_config(workdir / f"{name}.yaml", name, f"token-{name}-0123456789", collector, target_lines,
                                  interval="200ms")  # fmt: skip
               for name in names}

    def start(name: str) -> subprocess.Popen[bytes]:
        return processes.start(PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(configs[name]), name=name)

    running = {name: start(name) for name in names}
    wait_for(lambda: len(collector.stored()) > 0, 20, "the first results stored")
    started = time.monotonic()
    # the probe kills fall between collector kills, at random ones
    probe_kill_after = set(rng.sample(range(collector_kills), min(probe_kills, collector_kills)))
    killed_probes = 0
    for index in range(collector_kills):
        time.sleep(rng.uniform(0.3, 2.0))
        collector.process.send_signal(signal.SIGKILL)
        collector.process.wait(timeout=10)
        time.sleep(rng.uniform(0.0, 1.0))  # the probes keep measuring into their spools
        collector.start()
        if index in probe_kill_after:
            time.sleep(rng.uniform(0.2, 1.0))  # uploads are under way again: kill one mid-push
            victim = rng.choice(names)
            running[victim].send_signal(signal.SIGKILL)
            running[victim].wait(timeout=10)
            killed_probes += 1
            running[victim] = start(victim)
    time.sleep(2.0)
    seconds = time.monotonic() - started
    for process in running.values():
        process.send_signal(signal.SIGTERM)
    for name, process in running.items():
        if process.wait(timeout=15) != 0:
            raise AssertionError(f"{name} did not stop cleanly: {processes.log(name)[-2000:]}")
    cut = sum(processes.log(name).count("upload_failed") for name in names)
    books = tuple(count(collector, workdir, name) for name in names)
    return ChaosCounts(collector_kills, killed_probes, cut, seconds, books)
