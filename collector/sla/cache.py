"""The SLA window cache: the recent results a collector on the influx backend judges SLAs from.

InfluxDB keeps the history; judging needs every raw result of the last hour per series, read often
and cheaply. So the SLA service keeps a local SQLite file with the store's own schema (`SqliteStore`),
writes each accepted batch into it after the store, reads its windows exactly as it reads a SQLite
store's, and prunes what no window can reach any more.

The InfluxDB write decides the acknowledgement; the cache write comes after it and never fails a
batch. What the cache cannot vouch for is judged as no data, never as a pass or a breach:
`complete_since_ns` is the time from which it holds every accepted result. A new (or lost and
recreated) cache starts it at its opening, so windows are no data until they lie wholly after it;
a kept file keeps it from its oldest batch; a failed write moves it past that batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Final

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from qiancheng.core.logs import kv
from qiancheng.core.wire import Batch

from ..store import SeriesWindow, StoreError
from ..store.sqlite import SqliteStore

__all__ = ["PRUNE_MARGIN_SECONDS", "PRUNE_EVERY_SECONDS", "WindowCache", "CacheCollector"]

log = logging.getLogger("qiancheng.collector.sla.cache")

#: kept beyond the longest window, so that a pass reading while a prune runs still finds its window whole
PRUNE_MARGIN_SECONDS: Final = 300.0
#: how often the cache is pruned: each prune then deletes about a minute of results
PRUNE_EVERY_SECONDS: Final = 60.0


class WindowCache:
    """A SqliteStore that keeps `keep_seconds` of results; open with `await WindowCache.open(...)`."""

    def __init__(self, store: SqliteStore, keep_seconds: float, complete_since_ns: int) -> None:
        self.store = store
        self.keep_seconds = keep_seconds
        self.complete_since_ns = complete_since_ns
        self.write_failures = 0
        self.pruned = 0

    @property
    def path(self) -> str:
        return self.store.path

    @classmethod
    async def open(cls, path: str, keep_seconds: float, now_ns: int) -> WindowCache:
        """Open or create the cache file; raises StoreError (naming the file) if it cannot be used."""
        try:
            store = await SqliteStore.open(path)
        except StoreError as error:
            raise StoreError(f"SLA window cache (sla.cache): {error}") from error
        try:
            oldest = await store.oldest_batch_ns()
        except BaseException:
            await store.close()
            raise
        # a kept file holds every result accepted since its oldest batch; a new one, since now
        complete_since = min(oldest, now_ns) if oldest is not None else now_ns
        cache = cls(store, keep_seconds, complete_since)
        log.info(kv("sla_cache_opened", path=path, complete_since_ns=complete_since, new=oldest is None))
        return cache

    async def add(self, batch: Batch, received_ns: int) -> None:
        """Write an accepted batch; never raises a store failure (it is counted, logged, and the
        windows that would hold the batch's results are judged as no data)."""
        cutoff = received_ns - int(self.keep_seconds * 1e9)
        recent = [result for result in batch.results if result.start_ns >= cutoff]
        if not recent:
            return  # a replayed backlog older than any window: pruning would delete it at once
        if len(recent) < len(batch.results):
            batch = msgspec.structs.replace(batch, results=recent)
        try:
            await self.store.store_batch(batch, received_ns)
        except StoreError as error:
            self.write_failures += 1
            # its results started before it was received: windows from then on are whole again
            self.complete_since_ns = max(self.complete_since_ns, received_ns)
            log.warning(kv("sla_cache_write_failed", probe=batch.probe_id, batch=batch.batch_id,
                           results=len(batch.results), error=error))  # fmt: skip

    async def windows(self, since_ns: int, until_ns: int) -> list[SeriesWindow]:
        """The cached results of every series in [since_ns, until_ns] (a `WindowSource`)."""
        return await self.store.windows(since_ns, until_ns)

    async def prune(self, now_ns: int) -> int:
        """Delete results older than the longest window plus the margin; returns how many."""
        removed = await self.store.prune(now_ns - int((self.keep_seconds + PRUNE_MARGIN_SECONDS) * 1e9))
        self.pruned += removed
        return removed

    async def run_pruning(self, clock: Callable[[], int], every: float = PRUNE_EVERY_SECONDS) -> None:
        """Prune every `every` seconds until cancelled; a failed prune is logged and tried again next time."""
        while True:
            started = time.monotonic()
            try:
                removed = await self.prune(clock())
            except StoreError as error:
                log.warning(kv("sla_cache_prune_failed", path=self.path, error=error))
            else:
                log.debug(kv("sla_cache_pruned", results=removed, seconds=round(time.monotonic() - started, 4)))
            await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))

    async def close(self) -> None:
        await self.store.close()


class CacheCollector(Collector):
    """The window cache's own accounting on /metrics."""

    def __init__(self, cache: WindowCache) -> None:
        self._cache = cache

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        cache = self._cache
        yield CounterMetricFamily("qiancheng_sla_cache_write_failures",
                                  "Accepted batches the SLA window cache could not write (their windows read as no data).",
                                  value=cache.write_failures)  # fmt: skip
        yield CounterMetricFamily("qiancheng_sla_cache_pruned_results", "Results pruned from the SLA window cache.",
                                  value=cache.pruned)  # fmt: skip
        yield GaugeMetricFamily("qiancheng_sla_cache_complete_since_timestamp_seconds",
                                "Since when the SLA window cache holds every accepted result, Unix seconds.",
                                value=cache.complete_since_ns / 1e9)  # fmt: skip
