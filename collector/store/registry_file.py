"""The probe registry's SQLite file: its schema and every statement on it (the logic is ../registry.py).

A file of its own, in WAL mode, shared by the running collector and `qiancheng-collector probes ...`
(another process). Synchronous on purpose: the collector reads it on its event loop only when another
connection changed it (`data_version`), which is rare and takes a few ms for a few thousand probes; the
writes are single-row transactions of commands and enrollments. The file is separate from the results
so that result commits, hundreds a second, do not count as registry changes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from qiancheng.core.errors import QianchengError

from ..records import RegistryEntry

__all__ = ["RegistryError", "CodeRefused", "RegistryFile"]

T = TypeVar("T")

#: used and expired codes are kept this long after they expire (so that a reuse is told "used", not
#: "unknown"), then deleted when the next code is made
_KEEP_USED_NS = 30 * 86400 * 10**9

_SCHEMA = """
CREATE TABLE IF NOT EXISTS probes (
    id TEXT PRIMARY KEY,
    city TEXT NOT NULL DEFAULT '',
    isp TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,            -- 'config' (the YAML probes: list) or 'enrolled'
    state TEXT NOT NULL DEFAULT 'active',
    token_sha256 TEXT NOT NULL,
    previous_token_sha256 TEXT,      -- also accepted: the config's older hash, or a rotated-out token
    previous_expires_ns INTEGER,     -- NULL: no expiry (the config's change-over)
    created_ns INTEGER NOT NULL,
    changed_ns INTEGER NOT NULL
);
-- one-time enrollment codes (`qiancheng-collector enroll`): only the code's SHA-256 is kept
CREATE TABLE IF NOT EXISTS enrollment_codes (
    code_sha256 TEXT PRIMARY KEY,
    probe_id TEXT NOT NULL,
    city TEXT NOT NULL,
    isp TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    expires_ns INTEGER NOT NULL,
    used_ns INTEGER                  -- NULL: not used yet
);
"""
_COLUMNS = "id, city, isp, source, state, token_sha256, previous_token_sha256, previous_expires_ns, created_ns, changed_ns"


class RegistryError(QianchengError, ValueError):
    """A registry that cannot be opened, or a command that cannot be done (no such probe, ...)."""


class CodeRefused(RegistryError):
    """An enrollment code that cannot be used: `unknown`, `used` (at `when_ns`) or `expired` (at `when_ns`)."""

    def __init__(self, why: str, when_ns: int) -> None:
        super().__init__(why)
        self.why = why
        self.when_ns = when_ns


class RegistryFile:
    """One connection to the registry file; used by one thread at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        if not Path(path).parent.is_dir():
            raise RegistryError(f"directory {str(Path(path).parent)!r} does not exist")
        try:
            # made and used on one thread at a time (the collector's event loop, or the command line)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise RegistryError(f"registry {path}: {error}") from error
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a change answered is a change on disk
            self._db.execute("PRAGMA busy_timeout=5000")  # the collector and a command may write at once
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as error:
            self._db.close()
            raise RegistryError(f"registry {path}: {error}") from error

    def close(self) -> None:
        self._db.close()

    def data_version(self) -> int:
        """Changes when another connection commits (SQLite's `PRAGMA data_version`); ours do not move it."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def entries(self) -> list[RegistryEntry]:
        """Every probe, by id."""
        return [RegistryEntry(*row) for row in self._db.execute(f"SELECT {_COLUMNS} FROM probes ORDER BY id")]

    def entry(self, probe_id: str) -> RegistryEntry | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM probes WHERE id = ?", (probe_id,)).fetchone()
        return RegistryEntry(*row) if row is not None else None

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            done = work(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return done

    def import_config(self, probes: Iterable[tuple[str, str, str | None]], now_ns: int) -> None:
        """Make the config probes those given as (id, token hash, older hash or None): new ones added,
        hashes updated, ones no longer given removed; a revocation stays."""
        listed = list(probes)

        def work(db: sqlite3.Connection) -> None:
            ids = [probe_id for probe_id, _, _ in listed]
            enrolled = {row[0] for row in db.execute("SELECT id FROM probes WHERE source = 'enrolled'")}
            if clash := sorted(enrolled & set(ids)):
                raise RegistryError(f"probe {clash[0]!r} is in the config and was enrolled too: remove it from one")
            db.execute(f"DELETE FROM probes WHERE source = 'config' AND id NOT IN ({','.join('?' * len(ids))})", ids)
            for probe_id, token_hash, older in listed:
                db.execute(
                    "INSERT INTO probes (id, source, token_sha256, previous_token_sha256, created_ns, changed_ns) "
                    "VALUES (?, 'config', ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                    "changed_ns = CASE WHEN probes.token_sha256 = excluded.token_sha256 AND "
                    "probes.previous_token_sha256 IS excluded.previous_token_sha256 "
                    "THEN probes.changed_ns ELSE excluded.changed_ns END, "
                    "token_sha256 = excluded.token_sha256, previous_token_sha256 = excluded.previous_token_sha256, "
                    "previous_expires_ns = NULL",
                    (probe_id, token_hash, older, now_ns, now_ns),
                )

        self._write(work)

    def revoke(self, probe_id: str, now_ns: int) -> None:
        def work(db: sqlite3.Connection) -> None:
            if db.execute("UPDATE probes SET state = 'revoked', changed_ns = ? WHERE id = ?", (now_ns, probe_id)).rowcount == 0:
                raise RegistryError(f"no probe {probe_id!r} in the registry")

        self._write(work)

    def rotate(self, probe_id: str, token_hash: str, old_expires_ns: int, now_ns: int) -> None:
        """An enrolled, active probe's new token hash; the old one is accepted until `old_expires_ns`."""
        def work(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT source, state, token_sha256 FROM probes WHERE id = ?", (probe_id,)).fetchone()
            if row is None:
                raise RegistryError(f"no probe {probe_id!r} in the registry")
            source, state, current = row
            if source == "config":
                raise RegistryError(f"probe {probe_id!r} has its token from the config: change its token_sha256 there")
            if state == "revoked":
                raise RegistryError(f"probe {probe_id!r} is revoked: enroll it again")
            db.execute("UPDATE probes SET token_sha256 = ?, previous_token_sha256 = ?, previous_expires_ns = ?, "
                       "changed_ns = ? WHERE id = ?", (token_hash, current, old_expires_ns, now_ns, probe_id))

        self._write(work)

    def add_code(self, code_hash: str, probe_id: str, city: str, isp: str, now_ns: int, expires_ns: int) -> None:
        """A new enrollment code for `probe_id`: refused if that id is taken by a probe that is not a
        revoked enrolled one (whose box is being replaced); earlier unused codes for it stop working."""
        def work(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT source, state FROM probes WHERE id = ?", (probe_id,)).fetchone()
            if row is not None:
                source, state = row
                if source == "config":
                    raise RegistryError(f"probe {probe_id!r} is in the config's probes: list: pick another id")
                if state == "active":
                    raise RegistryError(f"probe {probe_id!r} is enrolled and active: revoke it first to enroll a new box as it")
            db.execute("DELETE FROM enrollment_codes WHERE probe_id = ? AND used_ns IS NULL", (probe_id,))
            db.execute("DELETE FROM enrollment_codes WHERE expires_ns < ?", (now_ns - _KEEP_USED_NS,))
            db.execute("INSERT INTO enrollment_codes (code_sha256, probe_id, city, isp, created_ns, expires_ns) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (code_hash, probe_id, city, isp, now_ns, expires_ns))

        self._write(work)

    def code_probe(self, code_hash: str) -> str | None:
        """The probe id a code was made for (used or not), or None."""
        row = self._db.execute("SELECT probe_id FROM enrollment_codes WHERE code_sha256 = ?", (code_hash,)).fetchone()
        return str(row[0]) if row is not None else None

    def redeem(self, code_hash: str, token_hash: str, now_ns: int) -> RegistryEntry:
        """Use a code: the probe it names is registered (or, revoked, re-enrolled) with `token_hash`, and
        the code is spent, in one transaction. Raises CodeRefused (unknown, used, expired) or RegistryError."""
        def work(db: sqlite3.Connection) -> RegistryEntry:
            row = db.execute("SELECT probe_id, city, isp, expires_ns, used_ns FROM enrollment_codes WHERE code_sha256 = ?",
                             (code_hash,)).fetchone()  # fmt: skip
            if row is None:
                raise CodeRefused("unknown", 0)
            probe_id, city, isp, expires_ns, used_ns = row
            if used_ns is not None:
                raise CodeRefused("used", used_ns)
            if expires_ns <= now_ns:
                raise CodeRefused("expired", expires_ns)
            existing = db.execute("SELECT source, state FROM probes WHERE id = ?", (probe_id,)).fetchone()
            if existing is not None and existing != ("enrolled", "revoked"):
                raise RegistryError(f"probe {probe_id!r} was registered since the code was made")
            db.execute("UPDATE enrollment_codes SET used_ns = ? WHERE code_sha256 = ?", (now_ns, code_hash))
            db.execute(f"INSERT OR REPLACE INTO probes ({_COLUMNS}) VALUES (?, ?, ?, 'enrolled', 'active', ?, NULL, NULL, ?, ?)",
                       (probe_id, city, isp, token_hash, now_ns, now_ns))  # fmt: skip
            return RegistryEntry(probe_id, city, isp, "enrolled", "active", token_hash, None, None, now_ns, now_ns)

        return self._write(work)

    def add_enrolled(self, entry: RegistryEntry) -> None:
        """A probe that enrolled (used by enrollment, and by tests standing in for it)."""
        self._write(lambda db: db.execute(f"INSERT INTO probes ({_COLUMNS}) VALUES ({','.join('?' * 10)})", (
            entry.id, entry.city, entry.isp, "enrolled", entry.state, entry.token_sha256,
            entry.previous_token_sha256, entry.previous_expires_ns, entry.created_ns, entry.changed_ns)))
