"""Where batches are kept for good: the Store protocol, the records it returns, and the backend registry.

A backend is one module with a class satisfying `Store` and one line in `_BACKENDS`: `sqlite` (one
local file) and `influx` (an InfluxDB write API). Every method is async: backends do their blocking
I/O off the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from qiancheng.core.errors import QianchengError
from qiancheng.core.result import Result
from qiancheng.core.wire import Batch

from ..config import StoreConfig

__all__ = [
    "StoreError",
    "BatchOutcome",
    "StoredResult",
    "ProbeRecord",
    "Store",
    "open_store",
]


class StoreError(QianchengError, OSError):
    """The store could not be opened, written or read; nothing was acknowledged."""


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What storing one batch did: a repeated batch stores nothing; `new` are the results stored now.

    `conflicts` counts results whose (probe, seq) was already stored with another start time: not a
    re-send but a probe whose spool restarted its numbering (a reinstalled box). They are not stored.
    """

    duplicate: bool
    new: Sequence[Result] = field(default=())
    conflicts: int = 0

    @property
    def stored(self) -> int:
        return len(self.new)


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A stored result with the identity and place of the probe that sent it."""

    probe_id: str
    city: str
    isp: str
    received_ns: int
    result: Result


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """A probe as its latest stored batch described it, and its totals in the store."""

    probe_id: str
    city: str
    isp: str
    labels: dict[str, str]
    stats: dict[str, float]
    last_seen_ns: int
    batches: int
    results: int


class Store(Protocol):
    """Durable, idempotent storage of batches: unique per (probe, batch_id) and per (probe, seq)."""

    backend: str

    async def store_batch(self, batch: Batch, received_ns: int) -> BatchOutcome:
        """Store a batch in one durable transaction; returns only once it is committed."""
        ...

    async def latest(
        self, probe_id: str | None = None, target: str | None = None, kind: str | None = None
    ) -> list[StoredResult]:
        """The latest result by start time of each (probe, target, kind), optionally filtered."""
        ...

    async def probes(self, probe_id: str | None = None) -> list[ProbeRecord]:
        """Every probe that ever stored a batch (or the one asked for)."""
        ...

    async def count(self, probe_id: str | None = None) -> int:
        """Results stored (for one probe, or for all)."""
        ...

    async def results_for(self, probe_id: str) -> list[StoredResult]:
        """Every stored result of one probe, by seq (for tests and small exports)."""
        ...

    async def healthy(self) -> bool:
        """True if the store answers a trivial read."""
        ...

    async def close(self) -> None:
        """Finish pending writes and release the store."""
        ...


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
