"""The probe's durable spool: a result is committed to disk before it counts as measured, and leaves
only when the collector has acknowledged the batch that carried it.

One SQLite file in WAL mode with `synchronous=FULL`: every commit is fsynced, so a result whose `add()`
returned survives a power cut or `kill -9`. Sizes are bytes of stored payload (msgspec JSON).

Group commit: results added within one short tick (`commit_delay`, 10 ms by default) share one
transaction and one fsync, and every `add()` of the group returns only after that commit. A probe
pinging a thousand targets a second thus fsyncs about a hundred times a second instead of a thousand,
and no result is reported as spooled before it is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import msgspec

from qiancheng.core.clock import monotonic, wall_ns
from qiancheng.core.logs import kv
from qiancheng.core.result import Result
from qiancheng.core.sqlite_thread import SqliteThread
from qiancheng.core.wire import MAX_RESULTS_PER_BATCH

__all__ = ["Spool", "SpoolCounters", "PendingBatch", "new_batch_id"]

log = logging.getLogger("qiancheng.spool")

_T = TypeVar("_T")

SCHEMA_VERSION: Final = 1
#: Longest stored quarantine reason, in characters; the collector's JSON error is cut to this.
MAX_REASON_CHARS: Final = 2000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS results (
    seq        INTEGER PRIMARY KEY,  -- from meta.last_seq: monotonic, never reused, not even after drops
    spooled_ns INTEGER NOT NULL,     -- wall clock at commit, UTC ns: the uploader's batch age
    size       INTEGER NOT NULL,     -- len(payload): drops and counters never read payloads
    batch_id   TEXT,                 -- NULL until batched; persisted so a retry keeps its id across restarts
    payload    BLOB NOT NULL         -- msgspec JSON of the Result, seq included
);
CREATE INDEX IF NOT EXISTS results_by_batch ON results(batch_id) WHERE batch_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS rejected (
    seq         INTEGER PRIMARY KEY,
    batch_id    TEXT NOT NULL,
    rejected_ns INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    payload     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""

# Totals live in `meta` and change in the same transaction as the rows they count, so they are exactly
# as durable as the rows: no rescans at start, no drift after a crash.
_META_KEYS: Final = (
    "schema_version", "last_seq", "measured_total", "acked_total", "dropped_total", "rejected_total",
    "backlog", "backlog_bytes", "rejected_bytes",
)  # fmt: skip

_CACHE_KIB: Final = 512
# The totals an add changes.
_ADD_KEYS: Final = ("last_seq", "measured_total", "dropped_total", "backlog", "backlog_bytes")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Result)


def new_batch_id() -> str:
    """A fresh batch id: 32 url-safe characters (fits the wire pattern `[A-Za-z0-9_-]{8,64}`)."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class SpoolCounters:
    """The spool's accounting; totals persist across restarts, sizes are payload bytes."""

    measured_total: int
    acked_total: int
    dropped_total: int
    rejected_total: int
    backlog: int
    backlog_bytes: int
    #: wall clock (UTC ns) at which the oldest pending result was committed; None when nothing is pending
    oldest_pending_ns: int | None


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """The oldest unacknowledged results under a batch id that stays the same until its content changes."""

    batch_id: str
    results: tuple[Result, ...]
    size_bytes: int

    @property
    def first_seq(self) -> int:
        return self.results[0].seq

    @property
    def last_seq(self) -> int:
        return self.results[-1].seq


class Spool:
    """Durable, bounded queue of results between the scheduler and the uploader."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int,
        *,
        max_rejected_bytes: int | None = None,
        drop_log_interval: float = 60.0,
        clock: Callable[[], int] = wall_ns,
        first_seq: int = 1,
        commit_delay: float = 0.01,
    ) -> None:
        """`first_seq` numbers the first result of a new spool file; an existing file goes on from its own.

        `commit_delay`: seconds an added result waits for others to share its commit (0: the next loop turn).
        """
        if max_bytes <= 0:
            raise ValueError(f"spool max_bytes must be > 0, got {max_bytes}")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        # Quarantined results are kept for operators, but a collector that rejects everything must not
        # fill the disk either: past this bound the oldest rejected rows go, with a log line.
        self.max_rejected_bytes = self.max_bytes // 4 if max_rejected_bytes is None else int(max_rejected_bytes)
        self._clock = clock
        self._first_seq = first_seq
        self._drop_log_interval = drop_log_interval
        self._drops_unlogged = 0
        self._drops_unlogged_bytes = 0
        self._last_drop_log = float("-inf")
        self._closed = False
        self._commit_delay = max(0.0, float(commit_delay))
        # Results waiting for the next group commit, by the add() that brought them, with the future it awaits.
        self._pending: list[tuple[list[Result], asyncio.Future[list[int | BaseException]]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._latest_counters: SpoolCounters | None = None  # as the last operation left them
        # All SQLite work runs on the spool's one connection thread, never on the event loop.
        self._sqlite = SqliteThread("qiancheng-spool")
        # Opening blocks the caller once, at start, for a few milliseconds; errors surface here.
        try:
            self._sqlite.open_now(self._connect)
        except BaseException:
            self._closed = True
            self._sqlite.abandon()
            raise

    # ------------------------------------------------------------------ public, async

    async def add(self, result: Result) -> int:
        """Number the result with the next seq, commit it (fsynced, with those added in the same tick), return the seq."""
        (outcome,) = await self.add_many((result,))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def add_many(self, results: Sequence[Result]) -> list[int | BaseException]:
        """`add` for several results with one future for all: for each, in order, its seq or the error that
        kept it out of the spool (the others are stored all the same)."""
        if self._closed:
            raise RuntimeError(f"spool {self.path} is closed")
        loop = asyncio.get_running_loop()
        committed: asyncio.Future[list[int | BaseException]] = loop.create_future()
        self._pending.append((list(results), committed))
        if self._committer is None or self._committer.get_loop() is not loop:  # none yet, or one of an ended loop
            self._committer = loop.create_task(self._commit_groups(), name="spool group commit")
        # Not shielded: the results are in the group from now on, and a cancelled caller does not take them
        # out of it (a cancelled future is passed over when the group's outcomes are handed out).
        return await committed

    async def settle(self) -> None:
        """Wait until every result handed to add() is committed, so a final flush can send them all."""
        while (committer := self._committer) is not None and not self._closed:
            await asyncio.wait({committer})  # its outcomes go to the add() callers, not here

    async def next_batch(self, max_results: int) -> PendingBatch | None:
        """The oldest pending results as a batch (an existing batch id is kept); None if nothing is pending."""
        limit = max(1, min(int(max_results), MAX_RESULTS_PER_BATCH))
        return await self._call(self._next_batch, limit)

    async def ack(self, batch_id: str) -> int:
        """The collector stored the batch: delete its results; returns how many were acknowledged."""
        return await self._call(self._ack, batch_id)

    async def split(self, batch_id: str) -> tuple[str, ...]:
        """Re-form a batch into two under new ids (older half first); () if the batch no longer exists."""
        return await self._call(self._split, batch_id)

    async def quarantine(self, batch_id: str, reason: str) -> int:
        """Move a batch the collector will never accept to the `rejected` table; returns how many moved."""
        return await self._call(self._quarantine, batch_id, reason)

    async def counters(self) -> SpoolCounters:
        """Totals and the current backlog."""
        if self._closed:
            raise RuntimeError(f"spool {self.path} is closed")
        # Read after every operation, on the spool thread, as its last step: the uploader asks after every
        # commit group, and a hop to the spool thread each time would cost more than the reading.
        latest = self._latest_counters
        return latest if latest is not None else await self._call(self._counters)

    def close(self) -> None:
        """Commit results still waiting for their group, close the database and its thread; safe to call twice.

        Call it from the event loop's thread (or after the loop has stopped).
        """
        if self._closed:
            return
        self._closed = True
        group, self._pending = self._pending, []
        if group:
            _settle(group, self._sqlite.call(lambda: self._add_group([r for results, _ in group for r in results])))
        # A group already on the spool thread commits before the connection closes there; the committer
        # task then hands out its seqs and ends, seeing the spool closed.
        self._sqlite.call(lambda: self._log_drops(force=True))
        self._sqlite.close_now()

    # ------------------------------------------------------------------ plumbing

    async def _commit_groups(self) -> None:
        """Commit what add() queued, one transaction per tick, until nothing waits."""
        try:
            while self._pending and not self._closed:
                await asyncio.sleep(self._commit_delay)
                group, self._pending = self._pending, []
                results = [result for added, _ in group for result in added]
                try:
                    outcomes = await self._call(self._add_group, results)
                except asyncio.CancelledError:  # the event loop is shutting down
                    for _, committed in group:
                        committed.cancel()
                    raise
                except Exception as error:  # noqa: BLE001 - handed to every add() of the group
                    outcomes = [error] * len(results)
                _settle(group, outcomes)
        finally:
            if self._committer is asyncio.current_task():
                self._committer = None

    async def _call(self, function: Callable[..., _T], *args: object) -> _T:
        if self._closed:
            raise RuntimeError(f"spool {self.path} is closed")
        # If the awaiting task is cancelled, work already started still completes on the thread, and
        # every operation is one transaction, so the spool stays consistent.
        return await self._sqlite.run(functools.partial(self._then_count, function, *args))

    def _conn(self) -> sqlite3.Connection:
        return self._sqlite.db

    def _then_count(self, function: Callable[..., _T], *args: object) -> _T:
        """On the spool thread: an operation, then the counters as it left them, for `counters()`."""
        try:
            return function(*args)
        finally:
            try:
                self._latest_counters = self._counters()
            except Exception:  # noqa: BLE001 - unreadable now: counters() asks the database itself
                self._latest_counters = None

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning(kv("spool_not_wal", path=self.path, journal_mode=mode))
        # FULL: the WAL is fsynced at every commit; NORMAL would lose the last commits on power loss.
        db.execute("PRAGMA synchronous=FULL")
        # A small page cache (SQLite's default is 2 MiB): rows are written once and read once, soon after,
        # from pages the OS caches anyway; on a small city box the memory matters more.
        db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        db.executescript(_SCHEMA)
        with _transaction(db):
            db.executemany("INSERT OR IGNORE INTO meta(key, value) VALUES (?, 0)", [(k,) for k in _META_KEYS])
            version = _meta(db)["schema_version"]
            if version == 0:
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
                db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (self._first_seq - 1,))
            elif version != SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: spool schema {version}, this probe reads {SCHEMA_VERSION}")
        return db

    # ------------------------------------------------------------------ on the spool thread

    def _add_group(self, results: list[Result]) -> list[int | BaseException]:
        """One transaction for all; if it fails, each alone, so one bad result cannot sink the others."""
        db = self._conn()
        dropped = dropped_bytes = 0
        try:
            with _transaction(db):
                before = _meta(db)
                meta = dict(before)
                outcomes: list[int | BaseException] = []
                rows: list[tuple[int, int, int, bytes]] = []
                for result in results:
                    seq, removed, removed_bytes = self._add(db, meta, result, rows)
                    outcomes.append(seq)
                    dropped, dropped_bytes = dropped + removed, dropped_bytes + removed_bytes
                _insert(db, rows)
                # The totals change once per group, in the same transaction as the rows they count.
                _bump(db, **{key: meta[key] - before[key] for key in _ADD_KEYS})
        except Exception as error:  # noqa: BLE001 - retried one by one below, each failure to its own caller
            if len(results) == 1:
                return [error]
            return [outcome for result in results for outcome in self._add_group([result])]
        if dropped:
            self._drops_unlogged += dropped
            self._drops_unlogged_bytes += dropped_bytes
            self._log_drops()
        return outcomes

    def _add(
        self, db: sqlite3.Connection, meta: dict[str, int], result: Result, rows: list[tuple[int, int, int, bytes]]
    ) -> tuple[int, int, int]:
        """Within the caller's transaction: number one result and queue its row in `rows`, making room;
        `meta` is kept current. Returns the seq, and how many results (and bytes) were dropped for it.
        """
        seq = meta["last_seq"] + 1
        payload = _encoder.encode(msgspec.structs.replace(result, seq=seq))
        size = len(payload)
        need = meta["backlog_bytes"] + size - self.max_bytes
        if need > 0:  # the queued rows go in first, so that room is made in the order results came
            _insert(db, rows)
        removed, removed_bytes = self._make_room(db, need)
        stored = meta["backlog_bytes"] - removed_bytes + size <= self.max_bytes
        if stored:
            rows.append((seq, self._clock(), size, payload))
        # A result larger than the whole spool is dropped itself: keeping it would break the disk
        # bound the operator set. Its seq is still used up, and it is counted as measured and dropped.
        dropped = removed + (0 if stored else 1)
        dropped_bytes = removed_bytes + (0 if stored else size)
        meta["last_seq"] += 1
        meta["measured_total"] += 1
        meta["dropped_total"] += dropped
        meta["backlog"] += (1 if stored else 0) - removed
        meta["backlog_bytes"] += (size if stored else 0) - removed_bytes
        return seq, dropped, dropped_bytes

    def _make_room(self, db: sqlite3.Connection, need: int) -> tuple[int, int]:
        """Delete the oldest results until `need` bytes are free; re-id batches that lost results."""
        if need <= 0:
            return 0, 0
        freed = count = 0
        last_seq: int | None = None
        touched: set[str] = set()
        # Walk only as far as needed (usually one row); close the cursor before writing the same table.
        with contextlib.closing(db.execute("SELECT seq, size, batch_id FROM results ORDER BY seq")) as oldest:
            for seq, size, batch_id in oldest:
                freed, count, last_seq = freed + size, count + 1, seq
                if batch_id is not None:
                    touched.add(batch_id)
                if freed >= need:
                    break
        if last_seq is None:
            return 0, 0
        db.execute("DELETE FROM results WHERE seq <= ?", (last_seq,))
        # A batch whose content changed gets a new id: the collector may have stored the old content
        # under the old id. Results it already has are deduplicated by (probe_id, seq).
        for batch_id in touched:
            db.execute("UPDATE results SET batch_id = ? WHERE batch_id = ?", (new_batch_id(), batch_id))
        return count, freed

    def _log_drops(self, force: bool = False) -> None:
        # One line per drop event, and while the spool stays full (every add drops) at most one line per
        # interval with the count since the last line, so a long outage cannot flood the log.
        if not self._drops_unlogged:
            return
        now = monotonic()
        if not force and now - self._last_drop_log < self._drop_log_interval:
            return
        total = _meta(self._conn())["dropped_total"]
        log.warning(kv("spool_full_dropped_oldest", results=self._drops_unlogged, bytes=self._drops_unlogged_bytes,
                       dropped_total=total, max_bytes=self.max_bytes, path=self.path))
        self._drops_unlogged = self._drops_unlogged_bytes = 0
        self._last_drop_log = now

    def _next_batch(self, limit: int) -> PendingBatch | None:
        db = self._conn()
        while True:
            with _transaction(db):
                head = db.execute("SELECT batch_id FROM results ORDER BY seq LIMIT 1").fetchone()
                if head is None:
                    return None
                batch_id: str | None = head[0]
                if batch_id is not None:
                    rows = db.execute(
                        "SELECT seq, size, payload FROM results WHERE batch_id = ? ORDER BY seq", (batch_id,)
                    ).fetchall()
                else:
                    rows = db.execute(
                        "SELECT seq, size, payload FROM results WHERE batch_id IS NULL ORDER BY seq LIMIT ?",
                        (limit,),
                    ).fetchall()
                    batch_id = new_batch_id()
                    db.execute(
                        "UPDATE results SET batch_id = ? WHERE batch_id IS NULL AND seq <= ?", (batch_id, rows[-1][0])
                    )
                results: list[Result] = []
                size = 0
                bad: list[tuple[int, str]] = []
                for seq, row_size, payload in rows:
                    try:
                        results.append(_decoder.decode(payload))
                        size += row_size
                    except msgspec.MsgspecError as error:
                        bad.append((seq, f"undecodable in spool: {error}"))
                if bad:
                    # A payload this version cannot read (corruption, or a Result written by another
                    # version) must not block every later result: set it aside where operators can see it,
                    # and give the rest a new id since the batch's content changed.
                    for seq, reason in bad:
                        self._move_to_rejected(db, "seq = ?", (seq,), batch_id, reason)
                    batch_id = new_batch_id()
                    db.executemany(
                        "UPDATE results SET batch_id = ? WHERE seq = ?", [(batch_id, r.seq) for r in results]
                    )
            if results:
                return PendingBatch(batch_id=batch_id, results=tuple(results), size_bytes=size)

    def _ack(self, batch_id: str) -> int:
        db = self._conn()
        with _transaction(db):
            count, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM results WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            if count:
                db.execute("DELETE FROM results WHERE batch_id = ?", (batch_id,))
                _bump(db, acked_total=count, backlog=-count, backlog_bytes=-size)
        return int(count)

    def _split(self, batch_id: str) -> tuple[str, ...]:
        db = self._conn()
        with _transaction(db):
            rows = db.execute("SELECT seq FROM results WHERE batch_id = ? ORDER BY seq", (batch_id,))
            seqs = [row[0] for row in rows]
            if not seqs:
                return ()
            if len(seqs) < 2:
                raise ValueError(f"batch {batch_id} holds one result and cannot be split")
            older, newer = new_batch_id(), new_batch_id()
            middle = seqs[len(seqs) // 2]
            db.execute("UPDATE results SET batch_id = ? WHERE batch_id = ? AND seq < ?", (older, batch_id, middle))
            db.execute("UPDATE results SET batch_id = ? WHERE batch_id = ?", (newer, batch_id))
        log.info(kv("spool_batch_split", batch_id=batch_id, results=len(seqs), into=f"{older},{newer}"))
        return older, newer

    def _quarantine(self, batch_id: str, reason: str) -> int:
        db = self._conn()
        with _transaction(db):
            count = self._move_to_rejected(db, "batch_id = ?", (batch_id,), batch_id, reason)
        return count

    def _move_to_rejected(
        self, db: sqlite3.Connection, where: str, args: tuple[object, ...], batch_id: str, reason: str
    ) -> int:
        """Within the caller's transaction: move matching results to `rejected`, count and log them."""
        reason = reason[:MAX_REASON_CHARS]
        rows = db.execute(f"SELECT seq, size FROM results WHERE {where}", args).fetchall()
        if not rows:
            return 0
        size = sum(row[1] for row in rows)
        db.execute(
            "INSERT OR REPLACE INTO rejected(seq, batch_id, rejected_ns, reason, size, payload) "
            f"SELECT seq, ?, ?, ?, size, payload FROM results WHERE {where}",
            (batch_id, self._clock(), reason, *args),
        )
        db.execute(f"DELETE FROM results WHERE {where}", args)
        _bump(db, rejected_total=len(rows), backlog=-len(rows), backlog_bytes=-size, rejected_bytes=size)
        log.error(kv("spool_quarantined", batch_id=batch_id, results=len(rows), first_seq=min(r[0] for r in rows),
                     last_seq=max(r[0] for r in rows), reason=reason))
        self._prune_rejected(db)
        return len(rows)

    def _prune_rejected(self, db: sqlite3.Connection) -> None:
        excess = _meta(db)["rejected_bytes"] - self.max_rejected_bytes
        if excess <= 0:
            return
        freed = count = 0
        last_seq = None
        with contextlib.closing(db.execute("SELECT seq, size FROM rejected ORDER BY seq")) as oldest:
            for seq, size in oldest:
                freed, count, last_seq = freed + size, count + 1, seq
                if freed >= excess:
                    break
        if last_seq is None:
            return
        db.execute("DELETE FROM rejected WHERE seq <= ?", (last_seq,))
        _bump(db, rejected_bytes=-freed)
        # Already counted in rejected_total and logged when quarantined; this line says they are gone.
        log.warning(kv("spool_rejected_pruned", results=count, bytes=freed, max_rejected_bytes=self.max_rejected_bytes))

    def _counters(self) -> SpoolCounters:
        db = self._conn()
        meta = _meta(db)
        oldest = db.execute("SELECT spooled_ns FROM results ORDER BY seq LIMIT 1").fetchone()
        return SpoolCounters(
            measured_total=meta["measured_total"],
            acked_total=meta["acked_total"],
            dropped_total=meta["dropped_total"],
            rejected_total=meta["rejected_total"],
            backlog=meta["backlog"],
            backlog_bytes=meta["backlog_bytes"],
            oldest_pending_ns=None if oldest is None else int(oldest[0]),
        )


class _transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error (the connection runs in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        # IMMEDIATE takes the write lock up front, so a reader in another process (the demo's summary)
        # cannot make a read-then-write transaction fail half way.
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")


def _settle(
    group: list[tuple[list[Result], asyncio.Future[list[int | BaseException]]]], outcomes: list[int | BaseException]
) -> None:
    """Hand each add() of a group the seqs or errors of its results."""
    position = 0
    for results, committed in group:
        mine = outcomes[position : position + len(results)]
        position += len(results)
        if committed.done() or committed.get_loop().is_closed():  # its caller is gone: nothing to tell
            continue
        committed.set_result(mine)


def _insert(db: sqlite3.Connection, rows: list[tuple[int, int, int, bytes]]) -> None:
    """Within the caller's transaction: store queued rows in one statement, and empty the queue."""
    if rows:
        db.executemany("INSERT INTO results(seq, spooled_ns, size, batch_id, payload) VALUES (?, ?, ?, NULL, ?)", rows)
        rows.clear()


def _meta(db: sqlite3.Connection) -> dict[str, int]:
    return {key: int(value) for key, value in db.execute("SELECT key, value FROM meta")}


def _bump(db: sqlite3.Connection, **deltas: int) -> None:
    changes: Iterable[tuple[int, str]] = ((delta, key) for key, delta in deltas.items() if delta)
    db.executemany("UPDATE meta SET value = value + ? WHERE key = ?", list(changes))
