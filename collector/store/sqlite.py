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
`windows()` scans each series' results in a time range through the `records_series` index.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from qiancheng.core.result import Result
from qiancheng.core.sqlite_thread import SqliteThread
from qiancheng.core.wire import Batch, Sent

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
from .group_commit import BatchWrite, GroupCommit

__all__ = ["SqliteStore", "SCHEMA_VERSION", "LATEST_SQL", "SERIES_SQL", "WINDOW_SQL"]

T = TypeVar("T")

#: 2 added results.hops and the path_changes table; 3 keeps each result as the probe sent it (JSON) under
#: an integer series, with `results` a view of the old columns (an older database is upgraded in place)
SCHEMA_VERSION: Final = 3

#: (no `;` but between statements: an upgrade runs it statement by statement inside its transaction)
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS batches (
    probe_id    TEXT    NOT NULL,
    batch_id    TEXT    NOT NULL,
    received_ns INTEGER NOT NULL,
    results     INTEGER NOT NULL,   -- results the batch carried
    stored      INTEGER NOT NULL,   -- of which new (the others were already stored by seq)
    PRIMARY KEY (probe_id, batch_id)
) WITHOUT ROWID;

-- one measured series: who measured what, how, and under which labels (a probe given another city,
-- ISP or target class starts new series, as Prometheus would), with its latest result by start time
-- then seq, kept up to date in each batch's transaction, so that "latest per series" is a lookup
CREATE TABLE IF NOT EXISTS series (
    id              INTEGER PRIMARY KEY,
    probe_id        TEXT    NOT NULL,
    target_name     TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    city            TEXT    NOT NULL,
    isp             TEXT    NOT NULL,
    target_class    TEXT    NOT NULL,
    latest_start_ns INTEGER NOT NULL,
    latest_seq      INTEGER NOT NULL,
    UNIQUE (probe_id, target_name, kind, city, isp, target_class)
);

-- every stored result, as the probe sent it: what a batch adds is a row here, one entry in the probe's
-- seq index and one at the end of its series in records_series (integers: a few bytes)
CREATE TABLE IF NOT EXISTS records (
    probe_id    TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    series      INTEGER NOT NULL,  -- series.id
    batch_id    TEXT    NOT NULL,
    start_ns    INTEGER NOT NULL,  -- when the test started, UTC ns: the result's true time
    received_ns INTEGER NOT NULL,  -- when the collector stored it (late results differ a lot)
    result      BLOB    NOT NULL,  -- the result (core.result.Result) in JSON, as the probe sent it
    UNIQUE (probe_id, seq)
);
-- one series over time (SLA windows, history of a target)
CREATE INDEX IF NOT EXISTS records_series ON records (series, start_ns);

-- the columns of schema 2, for queries by hand (sqlite3) and tools: read only, and slower than the tables
CREATE VIEW IF NOT EXISTS results AS
SELECT r.probe_id, r.seq, r.batch_id, s.city, s.isp, s.kind, s.target_name,
       json_extract(r.json, '$.target.address') AS target_address, s.target_class, r.start_ns,
       json_extract(r.json, '$.duration_seconds') AS duration_seconds, json_extract(r.json, '$.success') AS success,
       json_extract(r.json, '$.error') AS error, json_extract(r.json, '$.detail') AS detail,
       coalesce(json_extract(r.json, '$.figures'), '{}') AS figures,
       coalesce(json_extract(r.json, '$.info'), '{}') AS info,
       coalesce(json_extract(r.json, '$.samples'), '[]') AS samples, r.received_ns,
       coalesce(json_extract(r.json, '$.hops'), '[]') AS hops
FROM (SELECT *, CAST(result AS TEXT) AS json FROM records) r JOIN series s ON s.id = r.series;

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

#: schema 2 → 3, in the upgrade's transaction: its `results` table becomes `series` and `records`, each
#: result written out as the JSON a probe sends (json_object leaves out nothing: null is read as absent;
#: 17 digits: the number read back is the one stored)
_UPGRADE_FROM_2: Final = (
    "ALTER TABLE results RENAME TO results_v2",
    "DROP INDEX IF EXISTS results_series",
    _SCHEMA,
    "INSERT INTO series (probe_id, target_name, kind, city, isp, target_class, latest_start_ns, latest_seq)"
    " SELECT probe_id, target_name, kind, city, isp, target_class, start_ns, seq FROM ("
    "  SELECT *, ROW_NUMBER() OVER (PARTITION BY probe_id, target_name, kind, city, isp, target_class"
    "   ORDER BY start_ns DESC, seq DESC) AS n FROM results_v2) WHERE n = 1",
    "INSERT INTO records (probe_id, seq, series, batch_id, start_ns, received_ns, result)"
    " SELECT o.probe_id, o.seq, s.id, o.batch_id, o.start_ns, o.received_ns, CAST(json_object("
    "  'kind', o.kind, 'target', json_object('name', o.target_name, 'address', o.target_address, 'class', o.target_class),"
    "  'start_ns', o.start_ns, 'duration_seconds', json(printf('%!.17g', o.duration_seconds)),"
    "  'success', json(CASE WHEN o.success THEN 'true' ELSE 'false' END), 'error', o.error, 'detail', o.detail,"
    "  'figures', json(o.figures), 'info', json(o.info), 'samples', json(o.samples), 'hops', json(o.hops),"
    "  'seq', o.seq) AS BLOB)"
    " FROM results_v2 o JOIN series s ON s.probe_id = o.probe_id AND s.target_name = o.target_name"
    "  AND s.kind = o.kind AND s.city = o.city AND s.isp = o.isp AND s.target_class = o.target_class",
    "DROP TABLE results_v2",
    "DROP TABLE IF EXISTS latest",  # (absent from a version-1 database made by hand)
)

_INSERT_BATCH: Final = "INSERT INTO batches (probe_id, batch_id, received_ns, results, stored) VALUES (?, ?, ?, ?, ?)"
#: many rows in one statement (_many_rows): `?` for each of RECORD_FIELDS in each row
_INSERT_RECORDS: Final = (
    "INSERT OR IGNORE INTO records (probe_id, seq, series, batch_id, start_ns, received_ns, result) VALUES "
)
_RECORD_FIELDS: Final = 7
_FIND_SERIES: Final = (
    "SELECT id FROM series WHERE probe_id = ? AND target_name = ? AND kind = ? AND city = ? AND isp = ?"
    " AND target_class = ?"
)
_INSERT_SERIES: Final = (
    "INSERT INTO series (probe_id, target_name, kind, city, isp, target_class, latest_start_ns, latest_seq)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
#: many series in one statement (_many_rows): rows of (start_ns, seq, series id)
_UPDATE_LATEST: Final = (
    "UPDATE series SET latest_start_ns = v.column1, latest_seq = v.column2 FROM (VALUES {rows}) AS v"
    " WHERE series.id = v.column3 AND (v.column1, v.column2) > (series.latest_start_ns, series.latest_seq)"
)
_LATEST_FIELDS: Final = 3
_INSERT_PATH_CHANGE: Final = (
    "INSERT OR IGNORE INTO path_changes (probe_id, target_name, start_ns, seq, fingerprint, previous_fingerprint)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
#: the newest ?3 path changes of each (probe, target), optionally filtered, newest first
PATH_CHANGES_SQL: Final = (
    "SELECT probe_id, target_name, start_ns, fingerprint, previous_fingerprint FROM ("
    " SELECT *, ROW_NUMBER() OVER (PARTITION BY probe_id, target_name ORDER BY start_ns DESC, seq DESC) AS n"
    " FROM path_changes WHERE (?1 IS NULL OR probe_id = ?1) AND (?2 IS NULL OR target_name = ?2))"
    " WHERE n <= ?3 ORDER BY probe_id, target_name, start_ns DESC, seq DESC"
)
_UPSERT_PROBE: Final = (
    "INSERT INTO probes (probe_id, city, isp, labels, stats, last_seen_ns, batches, results)"
    " VALUES (?, ?, ?, ?, ?, ?, 1, ?)"
    " ON CONFLICT (probe_id) DO UPDATE SET city = excluded.city, isp = excluded.isp, labels = excluded.labels,"
    " stats = excluded.stats, last_seen_ns = excluded.last_seen_ns, batches = batches + 1,"
    " results = results + excluded.results"
)
#: what a StoredResult is made of (_stored_result), from `series s` and `records r`
_STORED_COLUMNS: Final = "s.probe_id, s.city, s.isp, r.received_ns, r.result"
#: the latest result of each (probe, target, kind), optionally filtered: of its series (one per set of
#: labels it was stored under), the one with the latest result
LATEST_SQL: Final = (
    f"SELECT {_STORED_COLUMNS} FROM ("
    " SELECT *, ROW_NUMBER() OVER (PARTITION BY probe_id, target_name, kind"
    "  ORDER BY latest_start_ns DESC, latest_seq DESC) AS n FROM series"
    " WHERE (?1 IS NULL OR probe_id = ?1) AND (?2 IS NULL OR target_name = ?2) AND (?3 IS NULL OR kind = ?3)) s"
    " JOIN records r ON r.probe_id = s.probe_id AND r.seq = s.latest_seq"
    " WHERE s.n = 1 ORDER BY s.probe_id, s.target_name, s.kind"
)
#: every series whose latest result started at or after ?1, with its labels
SERIES_SQL: Final = (
    "SELECT id, probe_id, city, isp, target_name, target_class, kind FROM series"
    " WHERE latest_start_ns >= ?1 ORDER BY probe_id, target_name, kind, city, isp, target_class"
)
#: one series' results that started within [?2, ?3], oldest first (a range scan of records_series)
WINDOW_SQL: Final = (
    "SELECT start_ns, result FROM records WHERE series = ?1 AND start_ns >= ?2 AND start_ns <= ?3 ORDER BY start_ns"
)
_PRUNE_SERIES: Final = "DELETE FROM records WHERE series = ? AND start_ns < ?"
#: SQLite's default cap on bound parameters is 32766; stay well below it
_IN_CHUNK: Final = 500
#: bytes per page of a database this store creates
_NEW_PAGE_SIZE: Final = 16384
#: the writer connection's page cache, KiB
_WRITER_CACHE_KIB: Final = 16384

_encode = msgspec.json.Encoder().encode
_decode_result = msgspec.json.Decoder(Result).decode
_decode_figures = msgspec.json.Decoder(dict[str, float]).decode
_decode_info = msgspec.json.Decoder(dict[str, str]).decode


class _WindowFields(msgspec.Struct):
    """What an SLA window reads of a stored result (the rest of its JSON is skipped, not decoded)."""

    success: bool
    figures: dict[str, float] = {}
    samples: list[float | None] = []


_decode_window_fields = msgspec.json.Decoder(_WindowFields).decode

#: a series as the writer finds it: (probe, target name, kind, city, ISP, target class)
SeriesLabels = tuple[str, str, str, str, str, str]


def _json(value: object) -> str:
    return _encode(value).decode()


def _stored_result(row: Sequence[Any]) -> StoredResult:
    probe_id, city, isp, received_ns, result = row
    return StoredResult(probe_id=probe_id, city=city, isp=isp, received_ns=received_ns, result=_decode_result(result))


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
        #: series labels → series.id, as committed (the writer thread's own: cleared when a transaction
        #: rolls back or a prune deletes series, so it never names a row that is not there)
        self._series_ids: dict[SeriesLabels, int] = {}
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
            if 0 < version < SCHEMA_VERSION:
                self._upgrade(db, version)
            else:
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _upgrade(db: sqlite3.Connection, version: int) -> None:
        """Bring a database of an older schema to this one, in one transaction (kept whole or not at all)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            if version == 1:  # results gain their hops; path_changes comes with the schema
                db.execute("ALTER TABLE results ADD COLUMN hops TEXT NOT NULL DEFAULT '[]'")
            for statement in _UPGRADE_FROM_2:
                for part in statement.split(";"):  # the schema script, one statement at a time
                    if part.strip():
                        db.execute(part)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _write_group(self, group: Sequence[BatchWrite]) -> list[BatchOutcome]:
        """Write batches in one transaction, in order; nothing is kept if one fails."""
        db = self._writer.db
        # IMMEDIATE takes the write lock now, so nothing can change between the checks and the inserts
        db.execute("BEGIN IMMEDIATE")
        try:
            outcomes = [self._insert_batch(db, *write) for write in group]
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._series_ids.clear()  # series made in the transaction are gone with it
            raise
        return outcomes

    def _series_id(self, db: sqlite3.Connection, labels: SeriesLabels, start_ns: int, seq: int) -> int:
        """The id of the series with `labels`, made (with this result as its latest) if it is new."""
        found = db.execute(_FIND_SERIES, labels).fetchone()
        series = int(found[0]) if found else db.execute(_INSERT_SERIES, (*labels, start_ns, seq)).lastrowid
        assert series is not None
        self._series_ids[labels] = series
        return series

    def _insert_batch(self, db: sqlite3.Connection, batch: Batch, received_ns: int, sent: Sent | None) -> BatchOutcome:
        """One batch's rows, inside the group's transaction: it sees what batches before it wrote."""
        seen = db.execute(
            "SELECT 1 FROM batches WHERE probe_id = ? AND batch_id = ?", (batch.probe_id, batch.batch_id)
        ).fetchone()
        if seen is not None:
            return BatchOutcome(duplicate=True)
        results = batch.results
        seqs = [r.seq for r in results]
        existing = self._stored_starts(db, batch.probe_id, seqs)
        # the usual batch: fresh seqs, none repeated, so every result is new and none needs a lookup
        fresh = not existing and len(set(seqs)) == len(seqs)
        new: list[Result] = list(results) if fresh else []
        rows: list[Any] = []  # the records' fields, row after row
        latest: dict[int, tuple[int, int]] = {}  # series → its latest (start_ns, seq) in this batch
        conflicts = 0
        probe, batch_id, city, isp, series_ids = batch.probe_id, batch.batch_id, batch.city, batch.isp, self._series_ids
        for index, result in enumerate(results):
            if not fresh:
                stored_start = existing.get(result.seq)
                if stored_start is not None:
                    conflicts += stored_start != result.start_ns
                    continue
                existing[result.seq] = result.start_ns  # a seq repeated inside the batch is stored once
                new.append(result)
            target = result.target
            labels = (probe, target.name, result.kind, city, isp, target.target_class)
            series = series_ids.get(labels) or self._series_id(db, labels, result.start_ns, result.seq)
            rows += (probe, result.seq, series, batch_id, result.start_ns, received_ns,
                     _encode(result) if sent is None else sent[index])  # fmt: skip
            mark = (result.start_ns, result.seq)
            if mark > latest.get(series, (-1, -1)):
                latest[series] = mark
        _many_rows(db, _INSERT_RECORDS + "{rows}", _RECORD_FIELDS, rows)
        changes = [(r, change) for r in new if (change := path_change(batch.probe_id, r)) is not None]
        if changes:
            db.executemany(_INSERT_PATH_CHANGE, [(c.probe_id, c.target, c.start_ns, r.seq, c.fingerprint,
                                                  c.previous_fingerprint) for r, c in changes])  # fmt: skip
        _many_rows(db, _UPDATE_LATEST, _LATEST_FIELDS, [v for series, mark in latest.items() for v in (*mark, series)])
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
                "SELECT seq, start_ns FROM records WHERE probe_id = ? AND seq BETWEEN ? AND ?", (probe_id, low, high)
            )
            return dict(rows)
        found: dict[int, int] = {}
        unique = sorted(set(seqs))
        for start in range(0, len(unique), _IN_CHUNK):
            chunk = unique[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(db.execute(f"SELECT seq, start_ns FROM records WHERE probe_id = ? AND seq IN ({marks})",
                                    (probe_id, *chunk)))  # fmt: skip
        return found

    def _prune(self, before_ns: int) -> int:
        db = self._writer.db
        # only a pruned store needs batches by time; a no-op after the first prune
        db.execute("CREATE INDEX IF NOT EXISTS batches_received ON batches (received_ns)")
        db.execute("BEGIN IMMEDIATE")
        try:
            # every result belongs to a series, so the per-series range deletes on records_series reach
            # every old result without a table scan; a series whose latest result is old has no other left
            removed = 0
            for (series,) in db.execute("SELECT id FROM series").fetchall():
                removed += db.execute(_PRUNE_SERIES, (series, before_ns)).rowcount
            db.execute("DELETE FROM series WHERE latest_start_ns < ?", (before_ns,))
            db.execute("DELETE FROM path_changes WHERE start_ns < ?", (before_ns,))
            db.execute("DELETE FROM batches WHERE received_ns < ?", (before_ns,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            self._series_ids.clear()
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
        for series, *labels in db.execute(SERIES_SQL, (since_ns,)).fetchall():
            rows = []
            for start, result in db.execute(WINDOW_SQL, (series, since_ns, until_ns)):
                fields = _decode_window_fields(result)
                rows.append(WindowRow(start_ns=start, success=fields.success, figures=fields.figures,
                                      samples=fields.samples))  # fmt: skip
            out.append((SeriesKey(*labels), rows))
        return out

    # -- the Store protocol --------------------------------------------------------------------------

    async def store_batch(self, batch: Batch, received_ns: int, sent: Sent | None = None) -> BatchOutcome:
        """Store a batch durably; returns once the commit holding it is on disk. Batches stored while a
        commit is under way share the next transaction (group_commit.py). `sent`: each result as the
        probe sent it, kept as it is (else each is encoded here)."""
        return await self.commits.store(batch, received_ns, sent)

    async def _commit_group(self, group: Sequence[BatchWrite]) -> list[BatchOutcome]:
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
        rows = await self._query(LATEST_SQL, (probe_id, target, kind))
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
        sql = (f"SELECT {_STORED_COLUMNS} FROM series s JOIN records r ON r.series = s.id WHERE s.probe_id = ?"
               " AND s.target_name = ? AND s.kind = 'path' AND r.start_ns < ? ORDER BY r.start_ns DESC, r.seq DESC LIMIT 1")  # fmt: skip
        rows = await self._query(sql, (probe_id, target, before_ns))
        return _stored_result(rows[0]) if rows else None

    async def oldest_batch_ns(self) -> int | None:
        """When the oldest batch still recorded was received (UTC ns); None for a store without batches."""
        rows = await self._query("SELECT MIN(received_ns) FROM batches")
        return None if rows[0][0] is None else int(rows[0][0])

    async def count(self, probe_id: str | None = None) -> int:
        """Results stored (a full count: for tests and checks, not for every request)."""
        sql = "SELECT COUNT(*) FROM records WHERE (?1 IS NULL OR probe_id = ?1)"
        rows = await self._query(sql, (probe_id,))
        return int(rows[0][0])

    async def results_for(self, probe_id: str) -> list[StoredResult]:
        """Every stored result of one probe, by seq (an export of the record; InfluxDB has its own query API)."""
        sql = f"SELECT {_STORED_COLUMNS} FROM records r JOIN series s ON s.id = r.series WHERE r.probe_id = ? ORDER BY r.seq"
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


#: rows per statement of _many_rows, largest first: each size's statement is prepared once and cached
_CHUNK_ROWS: Final = (256, 64, 16, 4, 1)
_statements: dict[tuple[str, int, int], str] = {}


def _many_rows(db: sqlite3.Connection, template: str, fields: int, values: Sequence[Any]) -> None:
    """Run `template` (its `{rows}` standing for `(?, ...), (?, ...)`) over `values`, `fields` per row,
    with as few statements as the chunk sizes allow.

    One statement for many rows, not executemany's one step per row: the sqlite3 module lets go of the
    GIL around each step, and while the event loop's thread holds it (decoding the next request), each
    step waits for it; so 100 rows meant up to 100 waits, and now mean four (64 + 16 + 16 + 4)."""
    done, total = 0, len(values)
    for rows in _CHUNK_ROWS:
        width = rows * fields
        while total - done >= width:
            key = (template, fields, rows)
            sql = _statements.get(key)
            if sql is None:
                sql = _statements[key] = template.format(rows=", ".join(["(" + ", ".join("?" * fields) + ")"] * rows))
            db.execute(sql, values[done : done + width])
            done += width
