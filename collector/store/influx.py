"""InfluxDB store: one synchronous write per batch through influxdb-client's async write API.

Acknowledgement: `store_batch` returns only after the server answered 204 to the batch's write, so a
200 to the probe means the points are in InfluxDB. The client's batching mode is not used: it groups
points of many requests in a background thread and reports success per group of its own making, so
it cannot tell when one probe batch is in. A probe batch already is a batch (up to 10000 results),
and retries belong to the probe, whose spool keeps a refused batch: a failed or slow write
(longer than `store.influx.timeout`) raises StoreError and the collector answers 503 + Retry-After.

Idempotence, in two layers:
- the point: measurement, tag set and the result's start time identify it, so writing a result again
  writes the same point and InfluxDB overwrites it; across collector restarts this is what holds.
- a memory of recent batch ids and seqs per probe (bounded): a retried batch or a re-sent result is
  acknowledged without being written again and counted once in /metrics. Stores that keep duplicate
  samples instead of overwriting (VictoriaMetrics without `-dedup.minScrapeInterval`) rely on it.

Reads: the collector's live views (`latest`, `probes`, the recent `path_changes`) are kept in memory
from what this process stored; after a restart they fill again as probes push. History is read from
InfluxDB itself (path changes: the `path_changes` field of `qiancheng_result`, kind `path`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from qiancheng.core.logs import kv
from qiancheng.core.result import Result
from qiancheng.core.wire import Batch, Sent

from ..config import InfluxConfig
from ..records import PathChange, path_change
from . import BatchOutcome, ProbeRecord, StoredResult, StoreError
from .lineprotocol import batch_lines

__all__ = ["InfluxStore", "RECENT_BATCHES", "RECENT_SEQS"]

log = logging.getLogger("qiancheng.collector.store.influx")

#: batch ids remembered per probe: a retry comes seconds after its first try, well within this
RECENT_BATCHES: Final = 256
#: seqs (with their start times) remembered per probe; about 100 bytes each
RECENT_SEQS: Final = 4096
#: path changes remembered per (probe, target) for GET /api/v1/paths
RECENT_PATH_CHANGES: Final = 100


@dataclass(slots=True)
class _ProbeMemory:
    """What one probe recently stored, and the lock that keeps its writes one at a time."""

    batches: OrderedDict[str, None] = field(default_factory=OrderedDict)
    seqs: OrderedDict[int, int] = field(default_factory=OrderedDict)  # seq → start_ns
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    record: ProbeRecord | None = None

    def fresh(self, results: list[Result]) -> list[Result]:
        """The results not stored before: a seq seen with the same start time is a re-send."""
        new: list[Result] = []
        seen: set[int] = set()
        for result in results:
            if self.seqs.get(result.seq) == result.start_ns or result.seq in seen:
                continue
            seen.add(result.seq)
            new.append(result)
        return new

    def remember(self, batch_id: str, stored: list[Result]) -> None:
        self.batches[batch_id] = None
        while len(self.batches) > RECENT_BATCHES:
            self.batches.popitem(last=False)
        for result in stored:
            self.seqs[result.seq] = result.start_ns
        while len(self.seqs) > RECENT_SEQS:
            self.seqs.popitem(last=False)


def _read_token(config: InfluxConfig) -> str:
    if not config.token_file:
        return config.token
    try:
        return Path(config.token_file).read_text().strip()
    except OSError as error:
        raise StoreError(f"cannot read store.influx.token_file {config.token_file!r}: {error.strerror}") from None


class InfluxStore:
    """The InfluxDB backend of `Store`; open it with `await InfluxStore.open(config)`."""

    backend = "influx"

    def __init__(self, config: InfluxConfig, client: InfluxDBClientAsync) -> None:
        self.config = config
        self._client = client
        self._write_api = client.write_api()
        self._memory: dict[str, _ProbeMemory] = {}
        self._latest: dict[tuple[str, str, str], StoredResult] = {}
        self._path_changes: dict[tuple[str, str], list[PathChange]] = {}
        self._closed = False

    @classmethod
    async def open(cls, config: InfluxConfig) -> InfluxStore:
        """Connect to the server; an unreachable one is logged, not fatal: writes answer 503 until it is up."""
        client = InfluxDBClientAsync(
            url=config.url, token=_read_token(config), org=config.org,  # an empty token sends no header
            timeout=int(config.timeout * 1000), enable_gzip=config.gzip,
        )  # fmt: skip
        store = cls(config, client)
        if not await store.healthy():
            log.warning(kv("store_unreachable", url=config.url, effect="batches get 503 until it answers"))
        return store

    async def store_batch(self, batch: Batch, received_ns: int, sent: Sent | None = None) -> BatchOutcome:
        """Write the batch's new results in one request; returns once the server accepted it (`sent` is not
        used: the points are written from the decoded results)."""
        memory = self._memory.setdefault(batch.probe_id, _ProbeMemory())
        async with memory.lock:  # one write per probe at a time: a retry waits for its first try
            if batch.batch_id in memory.batches:
                return BatchOutcome(duplicate=True)
            new = memory.fresh(batch.results)
            await self._write(batch_lines(batch, new, received_ns))
            memory.remember(batch.batch_id, new)
            self._keep_live(batch, new, received_ns, memory)
        return BatchOutcome(duplicate=False, new=tuple(new))

    async def _write(self, body: str) -> None:
        if self._closed:
            raise StoreError("the store is closed")
        try:
            async with asyncio.timeout(self.config.timeout):
                accepted = await self._write_api.write(
                    bucket=self.config.bucket, org=self.config.org, record=body,
                    write_precision=WritePrecision.NS,  # type: ignore[arg-type]  # the enum is a str
                )  # fmt: skip
        except ApiException as error:
            raise StoreError(f"influx {self.config.url}: HTTP {error.status} {error.reason}: {error.body!r}") from None
        except TimeoutError:
            raise StoreError(f"influx {self.config.url}: no answer within {self.config.timeout} s") from None
        except (aiohttp.ClientError, OSError) as error:
            raise StoreError(f"influx {self.config.url}: {error}") from None
        if not accepted:
            raise StoreError(f"influx {self.config.url}: the write was not accepted")

    def _keep_live(self, batch: Batch, new: list[Result], received_ns: int, memory: _ProbeMemory) -> None:
        for result in new:
            key = (batch.probe_id, result.target.name, result.kind)
            current = self._latest.get(key)
            if current is None or (result.start_ns, result.seq) > (current.result.start_ns, current.result.seq):
                self._latest[key] = StoredResult(batch.probe_id, batch.city, batch.isp, received_ns, result)
            change = path_change(batch.probe_id, result)
            if change is not None:
                changes = self._path_changes.setdefault((batch.probe_id, result.target.name), [])
                changes.append(change)
                changes.sort(key=lambda c: c.start_ns, reverse=True)  # a spool replays late ones too
                del changes[RECENT_PATH_CHANGES:]
        before = memory.record
        memory.record = ProbeRecord(
            probe_id=batch.probe_id, city=batch.city, isp=batch.isp, labels=dict(batch.labels),
            stats=dict(batch.stats), last_seen_ns=received_ns, batches=(before.batches if before else 0) + 1,
            results=(before.results if before else 0) + len(new),
        )  # fmt: skip

    async def latest(
        self, probe_id: str | None = None, target: str | None = None, kind: str | None = None
    ) -> list[StoredResult]:
        """The latest result of each (probe, target, kind) stored since this collector started."""
        return [
            stored
            for key, stored in sorted(self._latest.items())
            if (probe_id is None or key[0] == probe_id)
            and (target is None or key[1] == target)
            and (kind is None or key[2] == kind)
        ]

    async def path_changes(self, probe_id: str | None = None, target: str | None = None,
                           limit: int = 20) -> list[PathChange]:  # fmt: skip
        """The newest `limit` path changes of each (probe, target) stored since this collector started."""
        return [
            change
            for key, changes in sorted(self._path_changes.items())
            if (probe_id is None or key[0] == probe_id) and (target is None or key[1] == target)
            for change in changes[:limit]
        ]

    async def probes(self, probe_id: str | None = None) -> list[ProbeRecord]:
        """Every probe that stored a batch since this collector started (or the one asked for)."""
        return [
            memory.record
            for name, memory in sorted(self._memory.items())
            if memory.record is not None and (probe_id is None or name == probe_id)
        ]

    async def count(self, probe_id: str | None = None) -> int:
        """Results stored since this collector started (InfluxDB itself holds the full count)."""
        return sum(record.results for record in await self.probes(probe_id))

    async def healthy(self) -> bool:
        """True if the server answers its /ping."""
        if self._closed:
            return False
        try:
            async with asyncio.timeout(self.config.timeout):
                return bool(await self._client.ping())
        except (TimeoutError, aiohttp.ClientError, OSError, ApiException):
            return False

    async def close(self) -> None:
        """Release the HTTP session; writes in flight have already been awaited by their requests."""
        if not self._closed:
            self._closed = True
            await self._client.close()  # type: ignore[no-untyped-call]
