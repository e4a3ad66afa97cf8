"""Where batches are kept for good: the Store protocol and the backend registry (records: ../records.py).

A backend is one module with a class satisfying `Store` and one line in `_BACKENDS`: `sqlite` (one
local file) and `influx` (an InfluxDB write API). Every method is async: backends do their blocking
I/O off the event loop. The backends are the only code that speaks SQL or line protocol.

The SLA judgement reads windows of recent results per series (`WindowSource`): the SQLite store
serves them itself; with backend influx the judgement keeps a SQLite window cache that does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from aiohttp import web

from qiancheng.core.errors import QianchengError
from qiancheng.core.wire import Batch, Sent

from ..config import StoreConfig
from ..records import BatchOutcome, PathChange, ProbeRecord, SeriesKey, SeriesWindow, StoredResult, WindowRow

__all__ = [
    "StoreError",
    "BatchOutcome",
    "StoredResult",
    "ProbeRecord",
    "SeriesKey",
    "WindowRow",
    "SeriesWindow",
    "Store",
    "WindowSource",
    "open_store",
    "STORE_KEY",
]


class StoreError(QianchengError, OSError):
    """The store could not be opened, written or read; nothing was acknowledged."""


@runtime_checkable
class WindowSource(Protocol):
    """Where the SLA judgement reads its windows of recent results from."""

    async def windows(self, since_ns: int, until_ns: int) -> list[SeriesWindow]:
        """Every series with a result since `since_ns`, with its results in [since_ns, until_ns], oldest first."""
        ...


class Store(Protocol):
    """Durable, idempotent storage of batches: unique per (probe, batch_id) and per (probe, seq)."""

    backend: str

    async def store_batch(self, batch: Batch, received_ns: int, sent: Sent | None = None) -> BatchOutcome:
        """Store a batch in one durable transaction; returns only once it is committed. `sent`: each
        result as the probe sent it (JSON), for a backend that keeps results as sent."""
        ...

    async def latest(
        self, probe_id: str | None = None, target: str | None = None, kind: str | None = None
    ) -> list[StoredResult]:
        """The latest result by start time of each (probe, target, kind), optionally filtered."""
        ...

    async def probes(self, probe_id: str | None = None) -> list[ProbeRecord]:
        """Every probe that ever stored a batch (or the one asked for)."""
        ...

    async def path_changes(self, probe_id: str | None = None, target: str | None = None,
                           limit: int = 20) -> list[PathChange]:  # fmt: skip
        """The latest `limit` path changes of each (probe, target), optionally filtered, newest first."""
        ...

    async def count(self, probe_id: str | None = None) -> int:
        """Results stored (for one probe, or for all)."""
        ...

    async def healthy(self) -> bool:
        """True if the store answers a trivial read."""
        ...

    async def close(self) -> None:
        """Finish pending writes and release the store."""
        ...


#: the application's open store: any backend satisfying the Protocol
STORE_KEY = web.AppKey("store", Store)

Opener = Callable[[StoreConfig], Awaitable[Store]]


async def _open_sqlite(config: StoreConfig) -> Store:
    from .sqlite import SqliteStore

    return await SqliteStore.open(config.path)


async def _open_influx(config: StoreConfig) -> Store:
    from .influx import InfluxStore

    assert config.influx is not None  # the config check requires the section for this backend
    return await InfluxStore.open(config.influx)


#: backend name (config `store.backend`) → opener; a new backend is one module and one line here
_BACKENDS: dict[str, Opener] = {"sqlite": _open_sqlite, "influx": _open_influx}


async def open_store(config: StoreConfig) -> Store:
    """Open the configured backend; raises StoreError if it cannot be used."""
    return await _BACKENDS[config.backend](config)
