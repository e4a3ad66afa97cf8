"""One SQLite connection owned by one thread of its own: every call on it runs there, in order.

sqlite3 calls block (a COMMIT with synchronous=FULL waits for fsync: milliseconds on an SSD, up to
hundreds on an SD card) and must never stall the event loop; a connection also belongs to the thread
that made it. So each connection gets one worker thread, and work queued to it runs one job at a
time: one writer connection never contends with itself, and a job already started completes even if
the coroutine awaiting it is cancelled. Used by the probe's spool and the collector's SQLite store.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["SqliteThread"]

T = TypeVar("T")


class SqliteThread:
    """A connection and the one thread that opens, uses and closes it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._db: sqlite3.Connection | None = None
        self._ended = False

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for work running on this thread."""
        assert self._db is not None, f"{self.name}: used before it was opened"
        return self._db

    def _connect(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._db = connect()

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def open(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """Make the connection on the thread with `connect`; its errors are raised here."""
        await self.run(lambda: self._connect(connect))

    def open_now(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """`open` for callers outside an event loop (blocks until the connection is made)."""
        self.call(lambda: self._connect(connect))

    async def run(self, work: Callable[[], T]) -> T:
        """Run `work` on the thread, after what was queued before it."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def call(self, work: Callable[[], T]) -> T:
        """`run` for callers outside an event loop (or stopping it): blocks until `work` is done."""
        return self._executor.submit(work).result()

    async def close(self) -> None:
        """Close the connection after the queued work, then end the thread; safe to call twice."""
        if not self._ended:
            self._ended = True
            await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
            self._executor.shutdown(wait=True)

    def close_now(self) -> None:
        """`close` for callers outside an event loop."""
        if not self._ended:
            self._ended = True
            self._executor.submit(self._disconnect).result()
            self._executor.shutdown(wait=True)

    def abandon(self) -> None:
        """End the thread without waiting, after an open that failed (there is no connection to close)."""
        self._ended = True
        self._executor.shutdown(wait=False)
