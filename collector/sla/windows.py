"""Reads the recent results of every series from the SQLite store, for one judgement pass.

Its own read-only connection in its own thread: SQLite calls block, and under WAL a reader never
blocks the ingest writer. Each series is one range scan of the `results_series` index
(probe_id, target_name, kind, start_ns), so a pass costs in proportion to the results inside the
longest window, not to the size of the store.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from .indicators import Row

__all__ = ["SeriesKey", "SERIES_SQL", "WINDOW_SQL", "WindowReader"]

#: every (probe, target, kind) whose latest result started at or after ?1, with the labels of that result
SERIES_SQL: Final = (
    "SELECT l.probe_id, r.city, r.isp, l.target_name, r.target_class, l.kind"
    " FROM latest l JOIN results r ON r.probe_id = l.probe_id AND r.seq = l.seq"
    " WHERE l.start_ns >= ?1 ORDER BY l.probe_id, l.target_name, l.kind"
)
#: one series' results that started within [?4, ?5], oldest first (a range scan of results_series)
WINDOW_SQL: Final = (
    "SELECT start_ns, success, figures, samples FROM results"
    " WHERE probe_id = ?1 AND target_name = ?2 AND kind = ?3 AND start_ns >= ?4 AND start_ns <= ?5"
    " ORDER BY start_ns"
)

_decode_figures = msgspec.json.Decoder(dict[str, float]).decode
_decode_samples = msgspec.json.Decoder(list[float | None]).decode


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """One measured series: who measured what, and how."""

    probe: str
    city: str
    isp: str
    target: str
    target_class: str
    kind: str

    def labels(self) -> dict[str, str]:
        return {"probe": self.probe, "city": self.city, "isp": self.isp, "target": self.target,
                "target_class": self.target_class, "kind": self.kind}  # fmt: skip


class WindowReader:
    """Reads windows of results from the collector's SQLite file; `await close()` when done."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sla-reader")
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            uri = Path(self.path).resolve().as_uri() + "?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=5000")
        return self._db

    def _read(self, since_ns: int, until_ns: int) -> list[tuple[SeriesKey, list[Row]]]:
        db = self._connect()
        out: list[tuple[SeriesKey, list[Row]]] = []
        for labels in db.execute(SERIES_SQL, (since_ns,)).fetchall():
            key = SeriesKey(*labels)
            rows = [
                Row(start_ns=start, success=bool(success), figures=_decode_figures(figures), samples=_decode_samples(samples))
                for start, success, figures, samples in db.execute(
                    WINDOW_SQL, (key.probe, key.target, key.kind, since_ns, until_ns)
                )
            ]
            out.append((key, rows))
        return out

    async def read(self, since_ns: int, until_ns: int) -> list[tuple[SeriesKey, list[Row]]]:
        """Every series with a result since `since_ns`, with its results in [since_ns, until_ns], oldest first."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._read, since_ns, until_ns)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)
