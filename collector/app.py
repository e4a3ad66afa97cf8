"""The collector's aiohttp application: routes, typed app state, and the store opened through cleanup_ctx."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from qiancheng.core.clock import wall_ns
from qiancheng.core.enrollment import ENROLL_PATH
from qiancheng.core.logs import kv
from qiancheng.core.plan_wire import PLAN_PATH
from qiancheng.core.wire import RESULTS_PATH

from . import __version__
from .auth import authenticate
from .bodies import ErrorBody, Health, LatestResponse, PathEntry, PathsResponse, Totals, encode
from .config import CollectorConfig, StoreConfig
from .enroll import Enrollment
from .exposition import render_series
from .fleet import FleetQueryError, fleet, parse_query
from .ingest import INGEST_KEY, Ingest
from .live import LiveState
from .metrics import build_registry, new_live_state
from .openapi import (
    HEALTH_PATH,
    LATEST_PATH,
    MAX_PATH_CHANGES,
    METRICS_PATH,
    OPENAPI_PATH,
    PATHS_PATH,
    PROBES_PATH,
    openapi_document,
)
from .plan.freshness import PlanFreshness
from .plan.service import PlanService
from .records import PathChange
from .refused import Refused
from .registry import ProbeRegistry, open_registry
from .sla.service import install_sla
from .store import STORE_KEY, Store, StoreError, open_store

__all__ = [
    "CONFIG_KEY",
    "STATE_KEY",
    "REGISTRY_KEY",
    "STORE_KEY",
    "INGEST_KEY",
    "PROBES_KEY",
    "PLAN_KEY",
    "make_app",
    "make_internal_app",
]

log = logging.getLogger("qiancheng.collector")

StoreOpener = Callable[[StoreConfig], Awaitable[Store]]

CONFIG_KEY = web.AppKey("config", CollectorConfig)
STATE_KEY = web.AppKey("state", LiveState)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
PROBES_KEY = web.AppKey("probe_registry", ProbeRegistry)
PLAN_KEY = web.AppKey("plan", PlanService)
FRESHNESS_KEY = web.AppKey("plan_freshness", PlanFreshness)
ENROLL_KEY = web.AppKey("enroll", Enrollment)
_OPENAPI_KEY = web.AppKey("openapi", bytes)
_STARTED_KEY = web.AppKey("started", float)


@dataclass(frozen=True, slots=True)
class _Seams:
    """What tests may swap: how the store opens, and the wall clock (UTC ns)."""

    store_opener: StoreOpener
    clock: Callable[[], int]


_SEAMS_KEY = web.AppKey("seams", _Seams)
_MAIN_KEY = web.AppKey("main", web.Application)


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error is JSON; an unexpected exception is logged and becomes a 500 (a bug to fix)."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        headers = {hdrs.ALLOW: error.headers[hdrs.ALLOW]} if hdrs.ALLOW in error.headers else None
        response = _json(encode(ErrorBody(error=error.reason)), error.status)
        if headers:
            response.headers.update(headers)
        return response
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception(kv("internal_error", method=request.method, path=request.path))
        return _json(encode(ErrorBody(error="internal error in the collector; see its log")), 500)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the store, rebuild the live state from it, serve; on stop, let pending commits finish and close."""
    config = app[CONFIG_KEY]
    seams = app[_SEAMS_KEY]
    store = await seams.store_opener(config.store)
    try:
        probes = open_registry(config, seams.clock)
    except BaseException:
        await store.close()
        raise
    try:
        app[PROBES_KEY] = probes
        allowed = probes.active_ids()
        latest = await store.latest()
        app[STATE_KEY].restore(latest, await store.probes(), allowed)
        known_targets: dict[str, set[str]] = {}
        for stored in latest:  # what each probe already reports counts against limits.max_targets_per_probe
            known_targets.setdefault(stored.probe_id, set()).add(stored.result.target.name)
        app[STORE_KEY] = store
        mutual_tls = _mutual_tls(config)
        app[ENROLL_KEY] = Enrollment(probes, mutual_tls)
        if config.plan is not None:
            app[PLAN_KEY] = PlanService(config.plan.file, config.limits.max_targets_per_probe, probes, mutual_tls)
            app[FRESHNESS_KEY].expected = app[PLAN_KEY].version_for
        app[INGEST_KEY] = Ingest(probes, store, app[STATE_KEY], config.limits, seams.clock,
                                 client_certificates=mutual_tls, known_targets=known_targets)  # fmt: skip
        log.info(kv("store_opened", backend=store.backend, path=config.store.location,
                    series=len(app[STATE_KEY].series), probes=len(app[STATE_KEY].probes)))  # fmt: skip
        yield
    finally:
        await store.close()
        probes.close()
        log.info(kv("store_closed", backend=store.backend))


def _mutual_tls(config: CollectorConfig) -> bool:
    return config.listen.tls is not None and bool(config.listen.tls.client_ca_file)


async def _post_results(request: web.Request) -> web.Response:
    return await request.app[INGEST_KEY].handle(request)


def _main(request: web.Request) -> web.Application:
    """The collector's application, also for a request to the internal listener's."""
    return request.app.get(_MAIN_KEY, request.app)


async def _metrics(request: web.Request) -> web.Response:
    # rendered on the loop, where the state is mutated, so it never sees a half-applied batch; about a
    # microsecond per per-test sample (collector/exposition.py), a second for a shard of 250 cities
    app = _main(request)
    body = render_series(app[STATE_KEY], app[_SEAMS_KEY].clock()) + generate_latest(app[REGISTRY_KEY])
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST})


async def _health(request: web.Request) -> web.Response:
    app = _main(request)
    if STORE_KEY not in app:  # the internal listener may answer before the store has opened
        return _json(encode(ErrorBody(error="starting: the store is not open yet")), 503)
    store = app[STORE_KEY]
    ok = await store.healthy()
    health = Health(
        status="ok" if ok else "failing",
        store_ok=ok,
        store_backend=store.backend,
        version=__version__,
        uptime_seconds=round(time.monotonic() - app[_STARTED_KEY], 3),
    )
    return _json(encode(health), 200 if ok else 503)


async def _probes(request: web.Request) -> web.Response:
    try:
        filters, stale_after = parse_query(request.query)
    except FleetQueryError as error:
        return _json(encode(ErrorBody(error=error.reason, field=error.field)), 400)
    registry = request.app[PROBES_KEY]
    registry.refresh()  # a command may have changed it since the last push
    body = fleet(registry.entries(), request.app[STATE_KEY].probes, request.app[_SEAMS_KEY].clock(), filters, stale_after,
                 request.app[FRESHNESS_KEY])  # fmt: skip
    return _json(encode(body))


async def _enroll(request: web.Request) -> web.Response:
    return await request.app[ENROLL_KEY].handle(request)


async def _plan(request: web.Request) -> web.Response:
    service = request.app.get(PLAN_KEY)
    if service is None:
        # authenticated first: a stranger learns nothing of the collector's configuration
        try:
            authenticate(request, request.app[PROBES_KEY], _mutual_tls(request.app[CONFIG_KEY]))
        except Refused as refused:
            return refused.response()
        return _json(encode(ErrorBody(error="this collector serves no plan (its config has no plan.file)")), 404)
    return await service.handle(request)


async def _latest(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    probe = request.query.get("probe") or None
    target = request.query.get("target") or None
    kind = request.query.get("kind") or None
    try:
        latest = await store.latest(probe, target, kind)
        probes = await store.probes(probe)
    except StoreError as error:
        log.error(kv("store_read_failed", error=error))
        return _json(encode(ErrorBody(error="the store cannot be read")), 503)
    body = LatestResponse(
        results=latest,
        probes=probes,
        totals=Totals(results=sum(p.results for p in probes), batches=sum(p.batches for p in probes)),
    )
    return _json(encode(body))


async def _paths(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    probe = request.query.get("probe") or None
    target = request.query.get("target") or None
    text = request.query.get("changes", "20")
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_PATH_CHANGES:
        return _json(encode(ErrorBody(error=f"changes must be an integer within 0..{MAX_PATH_CHANGES}", field="changes")), 400)
    try:
        latest = await store.latest(probe, target, "path")
        changes = await store.path_changes(probe, target, int(text)) if int(text) else []
    except StoreError as error:
        log.error(kv("store_read_failed", error=error))
        return _json(encode(ErrorBody(error="the store cannot be read")), 503)
    by_series: dict[tuple[str, str], list[PathChange]] = {}
    for change in changes:
        by_series.setdefault((change.probe_id, change.target), []).append(change)
    entries = [PathEntry(stored, by_series.get((stored.probe_id, stored.result.target.name), [])) for stored in latest]
    return _json(encode(PathsResponse(paths=entries)))


async def _openapi(request: web.Request) -> web.Response:
    return _json(request.app[_OPENAPI_KEY])


def make_app(
    config: CollectorConfig,
    *,
    store_opener: StoreOpener = open_store,
    clock: Callable[[], int] = wall_ns,
) -> web.Application:
    """The application for `config`; the store opens when the app starts (AppRunner.setup)."""
    app = web.Application(middlewares=[_json_errors], client_max_size=int(config.limits.max_body_bytes))
    app[CONFIG_KEY] = config
    state = new_live_state(float(config.metrics.series_ttl))
    app[STATE_KEY] = state
    app[FRESHNESS_KEY] = PlanFreshness()
    # the per-test families are written by render_series in the handler: most of the samples, much faster
    app[REGISTRY_KEY] = build_registry(state, clock, freshness=app[FRESHNESS_KEY], series=False,
                                       hop_series=config.metrics.path_hop_series)
    app[_SEAMS_KEY] = _Seams(store_opener=store_opener, clock=clock)
    app[_STARTED_KEY] = time.monotonic()
    app[_OPENAPI_KEY] = json.dumps(openapi_document(__version__, int(config.limits.max_body_bytes))).encode()
    app.cleanup_ctx.append(_store_ctx)
    app.router.add_post(RESULTS_PATH, _post_results)
    if config.metrics_listen is None:
        app.router.add_get(METRICS_PATH, _metrics)
    app.router.add_get(HEALTH_PATH, _health)
    app.router.add_get(LATEST_PATH, _latest)
    app.router.add_get(PATHS_PATH, _paths)
    app.router.add_get(PROBES_PATH, _probes)
    app.router.add_get(OPENAPI_PATH, _openapi)
    app.router.add_get(PLAN_PATH, _plan)
    app.router.add_post(ENROLL_PATH, _enroll)
    install_sla(app, config, app[REGISTRY_KEY], clock)  # after the store's ctx: judging needs the open store
    return app


def make_internal_app(app: web.Application) -> web.Application:
    """/metrics and /healthz of `app` for the internal listener (`metrics_listen`). It shares no request
    handling with ingest, so both keep answering while ingest is overloaded."""
    internal = web.Application(middlewares=[_json_errors])
    internal[_MAIN_KEY] = app
    internal.router.add_get(METRICS_PATH, _metrics)
    internal.router.add_get(HEALTH_PATH, _health)
    return internal
