"""Full disks, with real processes: the collector's store on a small tmpfs the test mounts fills up (503
with Retry-After, nothing acknowledged that is not stored, recovery by itself once space returns), and
a probe's spool at its bound drops its oldest results, counted and shown by the collector."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import PYTHON, Processes, free_port
from tests.integration import chaos
from tests.integration.helpers import Collector, Responder, ingest_answers, probe_config, require_root, wait_for

TMPFS_BYTES = 8 * 1024 * 1024
LEFT_FREE_BYTES = 192 * 1024


@pytest.fixture
def small_disk(processes: Processes, tmp_path: Path) -> Iterator[Path]:
    """A fresh directory with an 8 MiB tmpfs mounted on it, unmounted at the end (also on failure), once
    the processes writing to it have stopped."""
    require_root()
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0700", "qiancheng-test", str(mountpoint)],
                   check=True)  # fmt: skip
    try:
        yield mountpoint
    finally:
        processes.stop_all()  # the collector's store lives here: stop it before the file system goes
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mountpoint)], check=False)  # never leave it mounted


def _acked(spool: Path) -> int:
    with closing(sqlite3.connect(f"file:{spool}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT value FROM meta WHERE key = 'acked_total'").fetchone()[0])


def _targets(port: int, count: int) -> str:
    return "".join(f"  - {{name: echo-{i}, address: '127.0.0.1:{port}', kinds: {{tcp: {{count: 1, timeout: 150ms}}}}}}\n"
                   for i in range(count))  # fmt: skip


def test_disk_full_store_answers_503_acknowledges_nothing_unstored_and_recovers(
    processes: Processes, tmp_path: Path, small_disk: Path
) -> None:
    responder = Responder(processes)
    responder.start()
    collector = Collector(processes, small_disk, tokens={"full-01": "token-full-0123456789"}, extra=chaos.UNLIMITED)
    collector.start()
    config = probe_config(tmp_path / "full-01.yaml", "full-01", "token-full-0123456789", collector,
                          _targets(responder.echo_port, 10), interval="200ms")  # fmt: skip
    probe = processes.start(PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(config), name="full-01")
    wait_for(lambda: len(collector.stored()) > 0, 20, "the first results stored")
    filler = small_disk / "filler"
    space = os.statvfs(small_disk)
    filler.write_bytes(b"\0" * max(0, space.f_bavail * space.f_frsize - LEFT_FREE_BYTES))

    wait_for(lambda: "store_failed" in processes.log("collector"), 60, "the store to fill up")
    wait_for(lambda: ingest_answers(collector.metrics(), 503) >= 2, 20, "503s while the disk is full")
    # the probe waits as the 503's Retry-After (5 s) says, keeping its results
    assert re.search(r'upload_failed .*error="http 503".*delay_seconds=5\b', processes.log("full-01")), processes.log("full-01")[-3000:]
    # whatever the probe was told is stored, is stored (the 200 comes only after the commit)
    assert _acked(tmp_path / "full-01-spool.db") <= len(collector.stored())
    stuck = len(collector.stored())

    filler.unlink()  # space returns: no restart, no operator
    wait_for(lambda: len(collector.stored()) > stuck + 20, 30, "storing to resume by itself")
    probe.send_signal(signal.SIGTERM)
    assert probe.wait(timeout=15) == 0
    books = chaos.count(collector, tmp_path, "full-01")
    assert (books.lost, books.duplicated, books.dropped, books.in_spool) == (0, 0, 0, 0), books
    assert books.stored == books.measured


def test_disk_full_probe_spool_at_its_bound_drops_oldest_counted_and_shown(processes: Processes, tmp_path: Path) -> None:
    responder = Responder(processes)
    responder.start()
    collector = Collector(processes, tmp_path, tokens={"bound-01": "token-bound-0123456789"}, port=free_port())
    config = probe_config(tmp_path / "bound-01.yaml", "bound-01", "token-bound-0123456789", collector,
                          _targets(responder.echo_port, 10), interval="200ms")  # fmt: skip
    config.write_text(config.read_text().replace("spool: {path:", "spool: {max_bytes: 48KiB, path:"))
    probe = processes.start(PYTHON, "-m", "qiancheng.probes.cli", "run", "--config", str(config), name="bound-01")
    # no collector yet: the spool fills to its bound and drops its oldest results
    wait_for(lambda: "spool_full_dropped_oldest" in processes.log("bound-01"), 60, "the spool to reach its bound")
    collector.start()
    wait_for(lambda: re.search(r'^qiancheng_probe_spool_dropped_total\{.*probe="bound-01".*\} [1-9]', collector.metrics(), re.M),
             30, "the drops shown by the collector")  # fmt: skip
    probe.send_signal(signal.SIGTERM)
    assert probe.wait(timeout=15) == 0
    books = chaos.count(collector, tmp_path, "bound-01")
    # The drops bound what is missing: a result dropped while its batch was in flight may still have
    # reached the collector (the spool cannot know; the collector keeps it once, by seq), so the store
    # may hold a few of the dropped ones (lost < 0 by the books' formula); nothing else may be missing.
    missing = books.lost + books.dropped  # numbered, neither stored nor in the spool
    assert books.dropped > 0 and 0 < missing <= books.dropped and books.duplicated == 0, books
    # the oldest went: what is stored is the newest of what was numbered
    first_stored = min(seq for seq, *_ in chaos.stored_rows(collector.db, "bound-01"))
    assert first_stored > books.first_seq, books
