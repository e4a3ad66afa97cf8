#!/usr/bin/env python3
"""HTTP kind against curl: body read rate on large objects and phase marks on a small one, same server.

A real responder is started on a free loopback port and serves `/download?bytes=N` (incompressible
bytes with a Content-Length). Our side is the HTTP kind's `measure`, called as the agent calls it (one
fresh connection per test, the exchange in a thread of its own); curl's side is `curl -w` with its
cumulative marks. The two take turns, which goes first alternating, so that both see the same machine.

- 32 MiB and 4 MiB objects: median time to last byte (time_total) of `--rounds` each; the body read
  rate is the object's size over that time. Target: ours >= 0.9x curl's on 32 MiB.
- 100 kB object: medians of `--mark-rounds` of time_connect, time_starttransfer and time_total.
  Target: each within 0.5 ms of curl's.

    .venv/bin/python bench/http.py [--rounds 7] [--mark-rounds 30]   (bench/http.py runs this file)

Every target prints a line ending in PASS or MISS; the last line is a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from procfs import free_port, wait_listening

from qiancheng.core.kind_settings import HttpSettings
from qiancheng.core.result import Target
from qiancheng.probes.measure.http import measure

MIB = 1024 * 1024
LARGE = (32 * MIB, 4 * MIB)
SMALL = 100_000
MARKS = ("time_connect", "time_starttransfer", "time_total")
READ_RATE_FLOOR = 0.9  # ours / curl, body read rate on 32 MiB
MARK_SLACK_MS = 0.5  # |ours - curl| per median mark on 100 kB


@dataclass(frozen=True)
class Marks:
    """Cumulative marks in seconds, as curl's -w names them, and the body bytes read."""

    time_connect: float
    time_starttransfer: float
    time_total: float
    size: int


def curl_marks(url: str) -> Marks:
    form = "%{time_connect} %{time_starttransfer} %{time_total} %{size_download}"
    out = subprocess.run(["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", form, url],
                         check=True, capture_output=True, text=True).stdout.split()  # fmt: skip
    return Marks(float(out[0]), float(out[1]), float(out[2]), int(out[3]))


async def our_marks(url: str) -> Marks:
    outcome = await measure(Target(name="bench", address=url), HttpSettings(url=url))
    if outcome.error is not None:
        raise SystemExit(f"our HTTP test of {url} failed: {outcome.error} {outcome.detail}")
    figures = outcome.figures
    return Marks(figures["time_connect_seconds"], figures["time_starttransfer_seconds"],
                 figures["time_total_seconds"], int(figures["bytes"]))  # fmt: skip


def interleaved(url: str, rounds: int, size: int) -> tuple[list[Marks], list[Marks]]:
    """`rounds` tests by each side, taking turns; every body must have its full size."""
    ours: list[Marks] = []
    theirs: list[Marks] = []
    for round_ in range(rounds):
        if round_ % 2 == 0:
            ours.append(asyncio.run(our_marks(url)))
            theirs.append(curl_marks(url))
        else:
            theirs.append(curl_marks(url))
            ours.append(asyncio.run(our_marks(url)))
    short = [m.size for m in ours + theirs if m.size != size]
    if short:
        raise SystemExit(f"bodies of {url} not {size} bytes: {short}")
    return ours, theirs


def median(marks: list[Marks], name: str) -> float:
    return float(statistics.median(float(getattr(m, name)) for m in marks))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7, help="tests per side on each large object (default 7)")
    parser.add_argument("--mark-rounds", type=int, default=30, help="tests per side on the 100 kB object (default 30)")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        print("bench/http.py compares with curl, which is not installed", file=sys.stderr)
        return 2
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="qiancheng-bench-http-") as tmp:
        log = Path(tmp) / "responder.log"
        command = [sys.executable, "-m", "qiancheng.probes.responder.main", "--listen", "127.0.0.1",
                   "--http-port", str(port), "--echo-port", "0", "--dns-port", "0", "--stamp-port", "0",
                   "--log-level", "warning"]  # fmt: skip
        with log.open("wb") as output:
            responder = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            if (problem := wait_listening(responder, port, 15)) is not None:
                raise SystemExit(f"responder {problem}: {log.read_text()}")
            return run(f"http://127.0.0.1:{port}/download?bytes=", args.rounds, args.mark_rounds)
        finally:
            responder.send_signal(signal.SIGTERM)
            try:
                responder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                responder.kill()
                responder.wait()


def run(base: str, rounds: int, mark_rounds: int) -> int:
    print(f"responder on loopback; ours (HTTP kind, in-process) and curl take turns; medians of {rounds} "
          f"(large objects) and {mark_rounds} (100 kB)")  # fmt: skip
    print(f"{'object':>9} {'ours ms':>9} {'curl ms':>9} {'ours Gbit/s':>12} {'curl Gbit/s':>12} {'ours/curl rate':>15}")
    lines: list[tuple[str, bool]] = []
    for size in LARGE:
        ours, theirs = interleaved(f"{base}{size}", rounds, size)
        our_total, their_total = median(ours, "time_total"), median(theirs, "time_total")
        ratio = their_total / our_total  # rates are size / time: the ratio of rates is the inverse of times'
        print(f"{size // MIB:>6} MiB {our_total * 1e3:>9.2f} {their_total * 1e3:>9.2f} "
              f"{size * 8 / our_total / 1e9:>12.2f} {size * 8 / their_total / 1e9:>12.2f} {ratio:>15.2f}")  # fmt: skip
        if size == LARGE[0]:
            lines.append((f"target: body read rate on {size // MIB} MiB, ours/curl {ratio:.2f} "
                          f"(needs >= {READ_RATE_FLOOR})", ratio >= READ_RATE_FLOOR))  # fmt: skip
    ours, theirs = interleaved(f"{base}{SMALL}", mark_rounds, SMALL)
    print("100 kB object, median marks in ms: " + ", ".join(
        f"{name} ours {median(ours, name) * 1e3:.3f} curl {median(theirs, name) * 1e3:.3f}" for name in MARKS))  # fmt: skip
    for name in MARKS:
        gap = abs(median(ours, name) - median(theirs, name)) * 1e3
        lines.append((f"target: {name} on 100 kB, |ours - curl| {gap:.3f} ms (needs <= {MARK_SLACK_MS})",
                      gap <= MARK_SLACK_MS))  # fmt: skip
    for text, ok in lines:
        print(f"{text} {verdict(ok)}")
    missed = sum(not ok for _, ok in lines)
    print(f"summary: {len(lines) - missed} of {len(lines)} HTTP targets met, {verdict(missed == 0)}")
    return 0 if missed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
