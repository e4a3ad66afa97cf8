"""SQLite store: durable transactions of one batch or several, in one writer thread; reads on others.

Durability: WAL journal with `synchronous=FULL`, so a COMMIT returns only after the WAL is fsynced
and a batch acknowledged with 200 survives a crash or power loss. Batches that arrive while a commit
is under way are written together in the next transaction, one fsync for all (group_commit.py); each
is answered only once that transaction committed. Idempotence: a batch is unique on
(probe_id, batch_id) and a result on (probe_id, seq), so a retried batch, or a result re-sent inside
another batch, is never stored twice.

Threads: sqlite3 calls block, so they never run on the event loop. All writes go through one
connection on a thread of its own (core.sqlite_thread): SQLite allows one writer at a time anyway, and
one thread writing one group after another never waits for a lock. The API's reads use a second
connection and thread, and the SLA's window reads a third, so a judgement pass never holds up a
request; under WAL no reader blocks the writer.

This module is the only code that speaks SQL to the collector's database, the SLA's reads included:
`windows()` scans each series' results in a time range through the `results_series` index.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from qiancheng.core.result import Hop, Result, Target
from qiancheng.core.sqlite_thread import SqliteThread
from qiancheng.core.wire import Batch

from ..records import (
    BatchOutcome,
    PathChange,
    ProbeRecord,
    SeriesKey,
    SeriesWindow,
    StoredResult,
    WindowRow,
    path_change,
)
from . import StoreError
from .group_commit import GroupCommit

__all__ = ["SqliteStore", "SCHEMA_VERSION", "SERIES_SQL", "WINDOW_SQL"]

T = TypeVar("T")

#: 2 added results.hops and the path_changes table (a version-1 database is upgraded in place)
SCHEMA_VERSION: Final = 2

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS batches (
    probe_id    TEXT    NOT NULL,
    batch_id    TEXT    NOT NULL,
    received_ns INTEGER NOT NULL,
    results     INTEGER NOT NULL,   -- results the batch carried
    stored      INTEGER NOT NULL,   -- of which new (the others were already stored by seq)
    PRIMARY KEY (probe_id, batch_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS results (
    probe_id         TEXT    NOT NULL,
    seq              INTEGER NOT NULL,
    batch_id         TEXT    NOT NULL,
    city             TEXT    NOT NULL,
    isp              TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    target_name      TEXT    NOT NULL,
    target_address   TEXT    NOT NULL,
    target_class     TEXT    NOT NULL,
    start_ns         INTEGER NOT NULL,  -- when the test started, UTC ns: the result's true time
    duration_seconds REAL    NOT NULL,
    success          INTEGER NOT NULL,
    error            TEXT,
    detail           TEXT,
    figures          TEXT    NOT NULL,  -- JSON object, base units
    info             TEXT    NOT NULL,  -- JSON object
    samples          TEXT    NOT NULL,  -- JSON array, seconds, null for a lost packet
    received_ns      INTEGER NOT NULL,  -- when the collector stored it (late results differ a lot)
    hops             TEXT    NOT NULL DEFAULT '[]',  -- JSON array of a path result's hops (core.result.Hop)
    PRIMARY KEY (probe_id, seq)
);
-- one series over time (SLA windows, history of a target)
CREATE INDEX IF NOT EXISTS results_series ON results (probe_id, target_name, kind, start_ns);

-- the latest result (by start time, then seq) of each series, kept up to date in the batch's
-- transaction, so that "latest per series" is a lookup rather than a scan of every result
CREATE TABLE IF NOT EXISTS latest (
    probe_id    TEXT    NOT NULL,
    target_name TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    start_ns    INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (probe_id, target_name, kind)
) WITHOUT ROWID;

-- every traced path that differed from the probe's previous one to the same target, kept with the batch
CREATE TABLE IF NOT EXISTS path_changes (
    probe_id             TEXT    NOT NULL,
    target_name          TEXT    NOT NULL,
    start_ns             INTEGER NOT NULL,  -- the trace that saw the new path
    seq                  INTEGER NOT NULL,
    fingerprint          TEXT    NOT NULL,
    previous_fingerprint TEXT    NOT NULL,
    PRIMARY KEY (probe_id, target_name, start_ns, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS probes (
    probe_id     TEXT    PRIMARY KEY,
    city         TEXT    NOT NULL,
    isp          TEXT    NOT NULL,
    labels       TEXT    NOT NULL,   -- JSON object of the latest batch
    stats        TEXT    NOT NULL,   -- JSON object of the latest batch (spool backlog, drops, ...)
    last_seen_ns INTEGER NOT NULL,
    batches      INTEGER NOT NULL,
    results      INTEGER NOT NULL
) WITHOUT ROWID;
"""

_INSERT_BATCH: Final = "INSERT INTO batches (probe_id, batch_id, received_ns, results, stored) VALUES (?, ?, ?, ?, ?)"
_INSERT_RESULT: Final = (
    "INSERT OR IGNORE INTO results (probe_id, seq, batch_id, city, isp, kind, target_name, target_address,"
    " target_class, start_ns, duration_seconds, success, error, detail, figures, info, samples, received_ns, hops)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_PATH_CHANGE: Final = (
    "INSERT OR IGNORE INTO path_changes (probe_id, target_name, start_ns, seq, fingerprint, previous_fingerprint)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
#: the newest ?4 path changes of each (probe, target), optionally filtered, newest first
PATH_CHANGES_SQL: Final = (
    "SELECT probe_id, target_name, start_ns, fingerprint, previous_fingerprint FROM ("
    " SELECT *, ROW_NUMBER() OVER (PARTITION BY probe_id, target_name ORDER BY start_ns DESC, seq DESC) AS n"
    " FROM path_changes WHERE (?1 IS NULL OR probe_id = ?1) AND (?2 IS NULL OR target_name = ?2))"
    " WHERE n <= ?3 ORDER BY probe_id, target_name, start_ns DESC, seq DESC"
)
_UPSERT_LATEST: Final = (
    "INSERT INTO latest (probe_id, target_name, kind, start_ns, seq) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (probe_id, target_name, kind) DO UPDATE SET start_ns = excluded.start_ns, seq = excluded.seq"
    " WHERE (excluded.start_ns, excluded.seq) > (latest.start_ns, latest.seq)"
)
_UPSERT_PROBE: Final = (
    "INSERT INTO probes (probe_id, city, isp, labels, stats, last_seen_ns, batches, results)"
    " VALUES (?, ?, ?, ?, ?, ?, 1, ?)"
    " ON CONFLICT (probe_id) DO UPDATE SET city = excluded.city, isp = excluded.isp, labels = excluded.labels,"
    " stats = excluded.stats, last_seen_ns = excluded.last_seen_ns, batches = batches + 1,"
    " results = results + excluded.results"
)
_RESULT_COLUMNS: Final = (
    "r.probe_id, r.city, r.isp, r.received_ns, r.kind, r.target_name, r.target_address, r.target_class,"
    " r.start_ns, r.duration_seconds, r.success, r.error, r.detail, r.figures, r.info, r.samples, r.seq, r.hops"
)
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
_PRUNE_SERIES: Final = "DELETE FROM results WHERE probe_id = ? AND target_name = ? AND kind = ? AND start_ns < ?"
#: SQLite's default cap on bound parameters is 32766; stay well below it
_IN_CHUNK: Final = 500
#: bytes per page of a database this store creates
_NEW_PAGE_SIZE: Final = 16384
#: the writer connection's page cache, KiB
_WRITER_CACHE_KIB: Final = 16384

_encode = msgspec.json.Encoder().encode
_decode_figures = msgspec.json.Decoder(dict[str, float]).decode
_decode_info = msgspec.json.Decoder(dict[str, str]).decode
_decode_samples = msgspec.json.Decoder(list[float | None]).decode
_decode_hops = msgspec.json.Decoder(list[Hop]).decode
_NO_HOPS: Final = "[]"


def _json(value: object) -> str:
    return _encode(value).decode()


def _result_rows(batch: Batch, results: Sequence[Result], received_ns: int) -> list[tuple[Any, ...]]:
    """The `results` rows of `batch`'s results (one comprehension: this runs for every stored result)."""
    probe, batch_id, city, isp = batch.probe_id, batch.batch_id, batch.city, batch.isp
    return [
        (probe, r.seq, batch_id, city, isp, r.kind, t.name, t.address, t.target_class, r.start_ns,
         r.duration_seconds, int(r.success), r.error, r.detail, _json(r.figures), _json(r.info), _json(r.samples),
         received_ns, _json(r.hops) if r.hops else _NO_HOPS)
        for r in results
        for t in (r.target,)
    ]  # fmt: skip


def _stored_result(row: Sequence[Any]) -> StoredResult:
    (probe_id, city, isp, received_ns, kind, name, address, target_class, start_ns, duration, success,
     error, detail, figures, info, samples, seq, hops) = row  # fmt: skip
    result = Result(
        kind=kind,
        target=Target(name=name, address=address, target_class=target_class),
        start_ns=start_ns,
        duration_seconds=duration,
        success=bool(success),
        error=error,
        detail=detail,
        figures=_decode_figures(figures),
        info=_decode_info(info),
        samples=_decode_samples(samples),
        hops=_decode_hops(hops) if hops != _NO_HOPS else [],
        seq=seq,
    )
    return StoredResult(probe_id=probe_id, city=city, isp=isp, received_ns=received_ns, result=result)


class SqliteStore:
    """The SQLite backend of `Store`; open it with `await SqliteStore.open(path)`."""

    backend = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer = SqliteThread("sqlite-writer")
        self._reader = SqliteThread("sqlite-reader")
        self._window_reader = SqliteThread("sqlite-windows")
        #: batches stored together: one transaction for those waiting while a commit is under way
        self.commits = GroupCommit(self._commit_group)
        self._closed = False

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        """Open (creating if needed) the database at `path`; raises StoreError."""
        store = cls(path)
        try:
            await store._run(store._writer.open(store._connect_writer))
            await store._run(store._reader.open(store._connect_reader))
            await store._run(store._window_reader.open(store._connect_reader))
        except BaseException:
            await store.close()
            raise
        return store

    async def _run(self, work: Awaitable[T]) -> T:
        try:
            return await work
        except sqlite3.Error as error:
            raise StoreError(f"sqlite {self.path}: {error}") from error

    # -- the writer thread ---------------------------------------------------------------------------

    def _connect_writer(self) -> sqlite3.Connection:
        if not Path(self.path).parent.is_dir():
            raise StoreError(f"directory {str(Path(self.path).parent)!r} does not exist")
        db = sqlite3.connect(self.path, isolation_level=None)  # autocommit: we issue BEGIN/COMMIT
        try:
            # a new file only (an existing one keeps its page size): a result row is ~0.8 KiB and a batch
            # appends to a few places (the table, its key, each series' end of the index), so big pages
            # mean fewer WAL frames, write calls and checkpoint copies per result (measured in-process:
            # a quarter less CPU to commit a result)
            db.execute(f"PRAGMA page_size={_NEW_PAGE_SIZE}")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot use WAL journal on {self.path!r} (got {mode})")
            db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit: a 200 means on disk
            # a group's transaction (up to MAX_GROUP_RESULTS results, ~0.8 KiB each) stays in memory until
            # its commit instead of spilling pages to the WAL half-way (SQLite's default cache is 2 MiB)
            db.execute(f"PRAGMA cache_size=-{_WRITER_CACHE_KIB}")
            db.execute("PRAGMA busy_timeout=5000")  # an outside reader (sqlite3 CLI) may hold a lock briefly
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path!r} has schema {version}, newer than this collector's {SCHEMA_VERSION}")
            if version == 1:  # results gain their hops; the new table comes with the script below
                db.execute("ALTER TABLE results ADD COLUMN hops TEXT NOT NULL DEFAULT '[]'")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def _write_group(self, group: Sequence[tuple[Batch, int]]) -> list[BatchOutcome]:
        """Write (batch, received_ns) pairs in one transaction, in order; nothing is kept if one fails."""
        db = self._writer.db
        # IMMEDIATE takes the write lock now, so nothing can change between the checks and the inserts
        db.execute("BEGIN IMMEDIATE")
        try:
            outcomes = [self._insert_batch(db, batch, received_ns) for batch, received_ns in group]
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return outcomes

    def _insert_batch(self, db: sqlite3.Connection, batch: Batch, received_ns: int) -> BatchOutcome:
        """One batch's rows, inside the group's transaction: it sees what batches before it wrote."""
        seen = db.execute(
            "SELECT 1 FROM batches WHERE probe_id = ? AND batch_id = ?", (batch.probe_id, batch.batch_id)
        ).fetchone()
        if seen is not None:
            return BatchOutcome(duplicate=True)
        existing = self._stored_starts(db, batch.probe_id, [r.seq for r in batch.results])
        new: list[Result] = []
        conflicts = 0
        for result in batch.results:
            stored_start = existing.get(result.seq)
            if stored_start is None:
                existing[result.seq] = result.start_ns  # a seq repeated inside the batch is stored once
                new.append(result)
            elif stored_start != result.start_ns:
                conflicts += 1
        db.executemany(_INSERT_RESULT, _result_rows(batch, new, received_ns))
        changes = [(r, change) for r in new if (change := path_change(batch.probe_id, r)) is not None]
        if changes:
            db.executemany(_INSERT_PATH_CHANGE, [(c.probe_id, c.target, c.start_ns, r.seq, c.fingerprint,
                                                  c.previous_fingerprint) for r, c in changes])  # fmt: skip
        db.executemany(
            _UPSERT_LATEST,
            [(batch.probe_id, r.target.name, r.kind, r.start_ns, r.seq) for r in _latest_per_series(new)],
        )
        db.execute(_INSERT_BATCH, (batch.probe_id, batch.batch_id, received_ns, len(batch.results), len(new)))
        db.execute(
            _UPSERT_PROBE,
            (batch.probe_id, batch.city, batch.isp, _json(batch.labels), _json(batch.stats), received_ns, len(new)),
        )
        return BatchOutcome(duplicate=False, new=tuple(new), conflicts=conflicts)

    @staticmethod
    def _stored_starts(db: sqlite3.Connection, probe_id: str, seqs: list[int]) -> dict[int, int]:
        """seq → start_ns of those of `seqs` this probe already stored (normally none: seqs are fresh)."""
        if not seqs:
            return {}
        low, high = min(seqs), max(seqs)
        if high - low < 2 * len(seqs):  # the usual dense run: one range scan of the primary key
            rows: Iterable[tuple[int, int]] = db.execute(
                "SELECT seq, start_ns FROM results WHERE probe_id = ? AND seq BETWEEN ? AND ?", (probe_id, low, high)
            )
            return dict(rows)
        found: dict[int, int] = {}
        unique = sorted(set(seqs))
        for start in range(0, len(unique), _IN_CHUNK):
            chunk = unique[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(db.execute(f"SELECT seq, start_ns FROM results WHERE probe_id = ? AND seq IN ({marks})",
                                    (probe_id, *chunk)))  # fmt: skip
        return found

    def _prune(self, before_ns: int) -> int:
        db = self._writer.db
        # only a pruned store needs batches by time; a no-op after the first prune
        db.execute("CREATE INDEX IF NOT EXISTS batches_received ON batches (received_ns)")
        db.execute("BEGIN IMMEDIATE")
        try:
            # every series with results has a `latest` row (it holds the series' newest start), so the
            # per-series range deletes on results_series reach every old result without a table scan
            series = db.execute("SELECT probe_id, target_name, kind FROM latest").fetchall()
            removed = 0
            for probe_id, target, kind in series:
                removed += db.execute(_PRUNE_SERIES, (probe_id, target, kind, before_ns)).rowcount
            db.execute("DELETE FROM latest WHERE start_ns < ?", (before_ns,))
            db.execute("DELETE FROM path_changes WHERE start_ns < ?", (before_ns,))
            db.execute("DELETE FROM batches WHERE received_ns < ?", (before_ns,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return removed

    # -- the reader threads --------------------------------------------------------------------------

    def _connect_reader(self) -> sqlite3.Connection:
        uri = Path(self.path).resolve().as_uri() + "?mode=ro"  # as_uri escapes `?` and `#` in the path
        db = sqlite3.connect(uri, uri=True, isolation_level=None)
        db.execute("PRAGMA busy_timeout=5000")
        return db

    async def _query(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        return await self._run(self._reader.run(lambda: self._reader.db.execute(sql, parameters).fetchall()))

    def _read_windows(self, since_ns: int, until_ns: int) -> list[SeriesWindow]:
        db = self._window_reader.db
        out: list[SeriesWindow] = []
        for labels in db.execute(SERIES_SQL, (since_ns,)).fetchall():
            key = SeriesKey(*labels)
            rows = [
                WindowRow(start_ns=start, success=bool(success), figures=_decode_figures(figures),
                          samples=_decode_samples(samples))
                for start, success, figures, samples in db.execute(
                    WINDOW_SQL, (key.probe, key.target, key.kind, since_ns, until_ns)
                )
            ]  # fmt: skip
            out.append((key, rows))
        return out

    # -- the Store protocol --------------------------------------------------------------------------

    async def store_batch(self, batch: Batch, received_ns: int) -> BatchOutcome:
        """Store a batch durably; returns once the commit holding it is on disk. Batches stored while a
        commit is under way share the next transaction (group_commit.py)."""
        return await self.commits.store(batch, received_ns)

    async def _commit_group(self, group: Sequence[tuple[Batch, int]]) -> list[BatchOutcome]:
        return await self._run(self._writer.run(lambda: self._write_group(group)))

    async def prune(self, before_ns: int) -> int:
        """Delete results that started before `before_ns`, and batches received before it; returns the
        results deleted. For a store that keeps only recent results (the SLA window cache): a batch
        retried after its record is pruned is not recognised as a duplicate."""
        return await self._run(self._writer.run(lambda: self._prune(before_ns)))

    async def latest(
        self, probe_id: str | None = None, target: str | None = None, kind: str | None = None
    ) -> list[StoredResult]:
        """The latest result of each (probe, target, kind), optionally filtered."""
        sql = (
            f"SELECT {_RESULT_COLUMNS} FROM latest l JOIN results r ON r.probe_id = l.probe_id AND r.seq = l.seq"
            " WHERE (?1 IS NULL OR l.probe_id = ?1) AND (?2 IS NULL OR l.target_name = ?2) AND (?3 IS NULL OR l.kind = ?3)"
            " ORDER BY l.probe_id, l.target_name, l.kind"
        )
        rows = await self._query(sql, (probe_id, target, kind))
        return [_stored_result(row) for row in rows]

    async def probes(self, probe_id: str | None = None) -> list[ProbeRecord]:
        """Every probe that stored a batch (or the one asked for)."""
        sql = (
            "SELECT probe_id, city, isp, labels, stats, last_seen_ns, batches, results FROM probes"
            " WHERE (?1 IS NULL OR probe_id = ?1) ORDER BY probe_id"
        )
        rows = await self._query(sql, (probe_id,))
        return [
            ProbeRecord(
                probe_id=p, city=c, isp=i, labels=_decode_info(labels), stats=_decode_figures(stats),
                last_seen_ns=seen, batches=batches, results=results,
            )
            for p, c, i, labels, stats, seen, batches, results in rows
        ]  # fmt: skip

    async def path_changes(self, probe_id: str | None = None, target: str | None = None,
                           limit: int = 20) -> list[PathChange]:  # fmt: skip
        """The newest `limit` path changes of each (probe, target), optionally filtered, newest first."""
        rows = await self._query(PATH_CHANGES_SQL, (probe_id, target, limit))
        return [PathChange(*row) for row in rows]

    async def path_before(self, probe_id: str, target: str, before_ns: int) -> StoredResult | None:
        """The latest `path` result of (probe, target) that started before `before_ns` (the SLA's blame)."""
        sql = (f"SELECT {_RESULT_COLUMNS} FROM results r WHERE r.probe_id = ? AND r.target_name = ? AND r.kind = 'path'"
               " AND r.start_ns < ? ORDER BY r.start_ns DESC, r.seq DESC LIMIT 1")  # fmt: skip
        rows = await self._query(sql, (probe_id, target, before_ns))
        return _stored_result(rows[0]) if rows else None

    async def oldest_batch_ns(self) -> int | None:
        """When the oldest batch still recorded was received (UTC ns); None for a store without batches."""
        rows = await self._query("SELECT MIN(received_ns) FROM batches")
        return None if rows[0][0] is None else int(rows[0][0])

    async def count(self, probe_id: str | None = None) -> int:
        """Results stored (a full count: for tests and checks, not for every request)."""
        sql = "SELECT COUNT(*) FROM results WHERE (?1 IS NULL OR probe_id = ?1)"
        rows = await self._query(sql, (probe_id,))
        return int(rows[0][0])

    async def results_for(self, probe_id: str) -> list[StoredResult]:
        """Every stored result of one probe, by seq (an export of the record; InfluxDB has its own query API)."""
        sql = f"SELECT {_RESULT_COLUMNS} FROM results r WHERE r.probe_id = ? ORDER BY r.seq"
        rows = await self._query(sql, (probe_id,))
        return [_stored_result(row) for row in rows]

    async def windows(self, since_ns: int, until_ns: int) -> list[SeriesWindow]:
        """Every series with a result since `since_ns`, with its results in [since_ns, until_ns], oldest
        first; one range scan of the series index per series, so a read costs in proportion to the
        results inside the window, not to the size of the store."""
        return await self._run(self._window_reader.run(lambda: self._read_windows(since_ns, until_ns)))

    async def healthy(self) -> bool:
        """True if a trivial read on the store succeeds."""
        if self._closed:
            return False
        try:
            await self._query("SELECT 1 FROM probes LIMIT 1")
        except StoreError:
            return False
        return True

    async def close(self) -> None:
        """Let queued writes commit, then close both connections and threads."""
        if self._closed:
            return
        self._closed = True
        await self.commits.drain()
        # jobs run in order on each connection's thread, so every queued batch commits before this;
        # the writer closes last, so that it checkpoints the WAL into the database file
        await self._window_reader.close()
        await self._reader.close()
        await self._writer.close()


def _latest_per_series(results: Iterable[Result]) -> list[Result]:
    """The result with the greatest (start_ns, seq) of each (target name, kind) among `results`."""
    best: dict[tuple[str, str], Result] = {}
    for result in results:
        key = (result.target.name, result.kind)
        current = best.get(key)
        if current is None or (result.start_ns, result.seq) > (current.start_ns, current.seq):
            best[key] = result
    return list(best.values())
