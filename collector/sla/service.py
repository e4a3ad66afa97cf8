"""The SLA judgement inside the collector: the periodic pass, its metrics, and GET /api/v1/sla.

`install_sla` wires it into the app; the pass starts once the store is open (cleanup_ctx order) and
stops before it closes. It reads the SQLite store's windows, or with backend influx those of its own
window cache, which it opens, fills after each stored batch, prunes and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry

from qiancheng.core.logs import kv

from ..bodies import ErrorBody, SlaObjective, SlaResponse, SlaWindow, encode
from ..config import CollectorConfig
from ..ingest import INGEST_KEY
from ..openapi import SLA_PATH
from ..store import STORE_KEY, Store, StoreError, WindowSource
from ..store.sqlite import SqliteStore
from .blame import Blame, Blamer, PathHistory
from .cache import CacheCollector, WindowCache
from .exposition import SlaCollector
from .judge import Judge, Judgement, window_name
from .profiles import load_sla_profiles

__all__ = ["SLA_KEY", "BLAMER_KEY", "SLA_FILTERS", "install_sla", "objective_body"]

log = logging.getLogger("qiancheng.collector.sla")

SLA_KEY = web.AppKey("sla", Judge)
BLAMER_KEY = web.AppKey("sla_blamer", Blamer)
#: query parameters of GET /api/v1/sla, each an exact match on the objective's label
SLA_FILTERS: Final = ("city", "isp", "probe", "target", "profile")


def objective_body(judgement: Judgement, blame: Blame | None = None) -> SlaObjective:
    """The JSON form of one judgement (with its breach's blame, if any)."""
    key, objective, state = judgement.series, judgement.objective, judgement.state
    return SlaObjective(
        **key.labels(), profile=judgement.profile.name, indicator=objective.name, measures=objective.indicator.name,
        unit=objective.indicator.unit, bound=objective.indicator.bound, threshold=objective.threshold,
        status=state.status, since_ns=state.since_ns, bad_streak=state.bad_streak, good_streak=state.good_streak,
        windows=[SlaWindow(window=window_name(w.seconds), seconds=w.seconds, value=w.value, results=w.results)
                 for w in judgement.windows],
        blame=blame,
    )  # fmt: skip


def _refuse(status: int, error: str, field: str | None = None) -> web.Response:
    return web.Response(status=status, body=encode(ErrorBody(error=error, field=field)), content_type="application/json")


async def _get_sla(request: web.Request) -> web.Response:
    judge = request.app[SLA_KEY]
    unknown = sorted(set(request.query) - set(SLA_FILTERS))
    if unknown:
        return _refuse(400, f"unknown query parameter {unknown[0]!r} (filters: {', '.join(SLA_FILTERS)})", unknown[0])
    wanted = {name: request.query[name] for name in SLA_FILTERS if request.query.get(name)}
    profile = wanted.get("profile")
    if profile is not None and profile not in judge.profiles.profiles:
        return _refuse(400, f"unknown profile {profile!r} (defined: {', '.join(judge.profiles.profiles)})", "profile")
    blamer = request.app[BLAMER_KEY]
    objectives = [
        objective_body(j, blamer.blame_of(j))
        for j in judge.judgements
        if all({**j.series.labels(), "profile": j.profile.name}[name] == value for name, value in wanted.items())
    ]
    body = SlaResponse(judged_ns=judge.judged_ns, pass_seconds=judge.pass_seconds, open_after=judge.open_after,
                       close_after=judge.close_after, objectives=objectives)  # fmt: skip
    return web.Response(body=encode(body), content_type="application/json")


async def _not_configured(request: web.Request) -> web.Response:
    return _refuse(404, "SLA judgement is not configured (collector config: sla.profiles)")


def _store_windows(store: Store) -> WindowSource:
    """The store itself, when it can serve windows (SQLite); the config check gives the others a cache."""
    if not isinstance(store, WindowSource):
        raise StoreError(f"the {store.backend} store cannot serve SLA windows and no sla.cache is set")
    return store


def _path_history(store: Store) -> PathHistory | None:
    """The store, when it keeps traced paths to compare (SQLite); else no breach is blamed."""
    return store if isinstance(store, SqliteStore) else None


@contextlib.asynccontextmanager
async def _window_cache(
    app: web.Application, path: str, keep_seconds: float, registry: CollectorRegistry, clock: Callable[[], int]
) -> AsyncIterator[WindowCache]:
    """The judgement's own window cache, open, written after every stored batch and on /metrics."""
    cache = await WindowCache.open(path, keep_seconds, clock())
    ingest = app[INGEST_KEY]
    collector = CacheCollector(cache)
    ingest.after_store.append(cache.add)
    registry.register(collector)
    try:
        yield cache
    finally:
        registry.unregister(collector)
        ingest.after_store.remove(cache.add)
        await cache.close()


def install_sla(app: web.Application, config: CollectorConfig, registry: CollectorRegistry, clock: Callable[[], int]) -> None:
    """Add GET /api/v1/sla and, when sla.profiles is set, the judgement pass and its metrics."""
    sla = config.sla
    if not sla.profiles:
        app.router.add_get(SLA_PATH, _not_configured)
        return
    judge = Judge(load_sla_profiles(sla.profiles), [float(w) for w in sla.windows], sla.open_after, sla.close_after)
    blamer = Blamer(None, judge.windows[0], sla.blame_share, sla.blame_edge_hops)
    app[SLA_KEY] = judge
    app[BLAMER_KEY] = blamer
    registry.register(SlaCollector(judge, blamer))

    async def judging(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            tasks: list[asyncio.Task[None]] = []
            source: WindowSource
            complete_since: Callable[[], int] = lambda: 0  # a store holds every accepted result
            if sla.cache:  # the store (InfluxDB) cannot serve windows: a cache of the recent results does
                cache = await stack.enter_async_context(_window_cache(app, sla.cache, max(sla.windows), registry, clock))
                source, reads = cache, cache.path
                blamer.history = cache.store
                complete_since = lambda: cache.complete_since_ns  # noqa: E731 - what the cache vouches for
                tasks.append(asyncio.create_task(cache.run_pruning(clock), name="sla-cache-prune"))
            else:
                source, reads = _store_windows(app[STORE_KEY]), "store"
                blamer.history = _path_history(app[STORE_KEY])
            tasks.append(asyncio.create_task(judge.run(source, clock, float(sla.interval), complete_since, blamer.update),
                                             name="sla-judge"))  # fmt: skip
            log.info(kv("sla_started", profiles=len(judge.profiles.profiles), file=sla.profiles, reads=reads,
                        windows=",".join(window_name(w) for w in judge.windows), interval=float(sla.interval)))  # fmt: skip
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    app.cleanup_ctx.append(judging)
    app.router.add_get(SLA_PATH, _get_sla)
