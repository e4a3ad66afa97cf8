"""The long-running probe: scheduler → spool → uploader, with SIGHUP reload and a bounded SIGTERM stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from pathlib import Path

import msgspec

from qiancheng.core import __version__, logs
from qiancheng.core.clock import wall_ns
from qiancheng.core.errors import ConfigError
from qiancheng.core.logs import kv
from qiancheng.core.result import Result
from qiancheng.core.wire import USER_AGENT_PREFIX

from .collector_client import CollectorClient
from .config import Job, ProbeConfig, load_probe_config
from .health import HostHealth
from .plan_client import AppliedPlan, PlanClient, read_saved_plan
from .scheduler import Scheduler
from .spool import Spool
from .uploader import Uploader

__all__ = ["Agent", "run_agent"]

log = logging.getLogger("qiancheng.agent")

_COMMIT_DELAY_SECONDS = 0.05


class Agent:
    """Owns one spool, one collector client, one uploader and one scheduler for the life of the process."""

    def __init__(self, config: ProbeConfig) -> None:
        self.config = config
        self._stop = asyncio.Event()
        self._spool: Spool | None = None
        self._client: CollectorClient | None = None
        self._uploader: Uploader | None = None
        self._upload_task: asyncio.Task[None] | None = None
        self._scheduler: Scheduler | None = None
        self._plan: AppliedPlan | None = None
        self._plan_client: PlanClient | None = None
        self._plan_task: asyncio.Task[None] | None = None
        #: results the spool could not take (disk full, I/O error), each logged
        self.spool_failures = 0
        self._health = HostHealth()

    def _open_client(self) -> CollectorClient:
        """The one HTTP client to the collector, with its TLS settings (checked when the config loaded)."""
        collector = self.config.collector
        if collector.insecure_skip_verify:
            log.warning(kv("tls_verification_off", collector=collector.url,
                           risk="anyone on the path can read and change results and take the token",
                           fix="remove collector.insecure_skip_verify; give collector.ca_file if the CA is private"))  # fmt: skip
        return CollectorClient(collector.tls(), USER_AGENT_PREFIX + __version__)

    def _make_uploader(self, spool: Spool, client: CollectorClient) -> Uploader:
        c = self.config
        return Uploader(
            spool=spool,
            client=client,
            url=c.collector.url,
            token=c.token,
            probe_id=c.probe.id,
            city=c.probe.city,
            isp=c.probe.isp,
            labels=dict(c.probe.labels),
            batch_max_results=c.collector.batch_max_results,
            batch_max_age=float(c.collector.batch_max_age),
            request_timeout=float(c.collector.timeout),
            backoff_base=float(c.collector.backoff_base),
            backoff_cap=float(c.collector.backoff_cap),
            health=self._health.stats,
            plan_version=lambda: self._plan.version if self._plan is not None else "",
        )

    def jobs(self) -> tuple[Job, ...]:
        """The config's own jobs and the plan's; a target of the config replaces the plan's of that name."""
        own = self.config.jobs
        if self._plan is None:
            return own
        names = {job.target.name for job in own}
        return own + tuple(job for job in self._plan.jobs if job.target.name not in names)

    def _apply_plan(self, applied: AppliedPlan) -> None:
        """A new plan, checked whole: from now on the scheduler runs it (tests in progress finish)."""
        previous = self._plan.version if self._plan is not None else ""
        self._plan = applied
        if self._scheduler is not None:
            self._scheduler.apply(self.jobs())
        log.info(kv("plan_applied", version=applied.version, previous=previous or "none",
                    targets=len(applied.plan.targets), jobs=len(self.jobs())))  # fmt: skip

    def _start_plan_client(self) -> None:
        c = self.config
        if c.plan is None:
            self._plan = None
            return
        assert self._client is not None
        saved = c.plan.saved_path(c.spool)
        if self._plan is None:
            self._plan = read_saved_plan(saved, c.probe.id)
            if self._plan is not None:
                log.info(kv("plan_loaded", file=str(saved), version=self._plan.version, targets=len(self._plan.plan.targets)))
        self._plan_client = PlanClient(self._client, c.collector.url, c.token, c.probe, float(c.plan.poll_interval),
                                       float(c.collector.timeout), saved, self._apply_plan,
                                       version=self._plan.version if self._plan is not None else "")  # fmt: skip
        self._plan_task = asyncio.create_task(self._plan_client.run(), name="plan")

    async def _stop_plan_client(self) -> None:
        if self._plan_client is not None and self._plan_task is not None:
            self._plan_client.stop()
            await asyncio.gather(self._plan_task, return_exceptions=True)
        self._plan_client, self._plan_task = None, None

    async def _record(self, job: Job, result: Result) -> None:
        """The scheduler's sink: a result counts as measured once the spool has committed it."""
        await self._record_group([(job, result)])

    async def _record_group(self, measured: Sequence[tuple[Job, Result]]) -> None:
        """The sink of tests that ran together: their results go to the spool in one hand-over."""
        assert self._spool is not None and self._uploader is not None
        # which plan each test was run under, for the record
        results = [msgspec.structs.replace(result, info={**result.info, "plan": job.plan}) if job.plan else result
                   for job, result in measured]  # fmt: skip
        try:
            outcomes: list[int | BaseException] = await self._spool.add_many(results)
        except Exception as error:  # noqa: BLE001 - a full or broken disk must not stop the scheduler
            outcomes = [error] * len(results)
        for result, outcome in zip(results, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self.spool_failures += 1
                log.error(kv("spool_add_failed", kind=result.kind, target=result.target.name,
                             failures=self.spool_failures, error=f"{type(outcome).__name__}: {outcome}"))
        if len(outcomes) > sum(isinstance(outcome, BaseException) for outcome in outcomes):
            self._uploader.notify()

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        c = self.config
        Path(c.spool.path).parent.mkdir(parents=True, exist_ok=True)
        # A new spool numbers from the wall clock in microseconds, so a reinstalled box (empty spool, same
        # probe id) continues above every seq the collector already holds instead of colliding with them.
        # Results finishing within 50 ms share one fsynced commit: a thousand per-second targets cost about
        # twenty fsyncs a second; nothing waits on it but the spooling itself (uploads go by batch age).
        self._spool = Spool(c.spool.path, max_bytes=int(c.spool.max_bytes), first_seq=wall_ns() // 1000,
                            commit_delay=_COMMIT_DELAY_SECONDS)
        self._client = self._open_client()
        self._uploader = self._make_uploader(self._spool, self._client)
        self._upload_task = asyncio.create_task(self._uploader.run(), name="uploader")
        self._scheduler = Scheduler(c.probe.id, self._record, c.scheduler.max_concurrency,
                                    sink_group=self._record_group)
        self._start_plan_client()
        self._scheduler.apply(self.jobs())
        counters = await self._spool.counters()
        log.info(kv("probe_started", probe=c.probe.id, city=c.probe.city, isp=c.probe.isp, jobs=len(self.jobs()),
                    plan=(self._plan.version if self._plan is not None else "none") if c.plan is not None else "off",
                    collector=c.collector.url, spool=c.spool.path, backlog=counters.backlog, version=__version__))
        await self._stop.wait()
        return await self._shutdown()

    async def reload(self) -> None:
        """SIGHUP: apply a new config if it is valid; keep running the old one otherwise."""
        try:
            new = load_probe_config(self.config.file)
        except ConfigError as error:
            log.error(kv("reload_refused", reason=str(error)))
            return
        assert self._scheduler is not None and self._spool is not None and self._client is not None
        old, self.config = self.config, new
        if new.spool != old.spool:
            log.warning(kv("reload_spool_unchanged", reason="spool settings take effect at the next start"))
        reconnect = (new.collector, new.token, new.probe) != (old.collector, old.token, old.probe)
        if reconnect or new.plan != old.plan:
            await self._stop_plan_client()
            if new.probe.id != old.probe.id or new.plan is None:
                self._plan = None  # another probe's plan, or none wanted any more
        if reconnect:
            # The spool keeps every result; only the uploader that sends them is replaced.
            assert self._uploader is not None and self._upload_task is not None
            self._uploader.stop()
            await asyncio.gather(self._upload_task, return_exceptions=True)
            await self._client.close()
            self._client = self._open_client()
            self._uploader = self._make_uploader(self._spool, self._client)
            self._upload_task = asyncio.create_task(self._uploader.run(), name="uploader")
        if self._plan_task is None:
            self._start_plan_client()
        self._scheduler.apply(self.jobs(), probe_id=new.probe.id)
        log.info(kv("reloaded", jobs=len(self.jobs())))

    async def _shutdown(self) -> int:
        """Stop measuring, push what the flush budget allows, close; all within 5 s of SIGTERM."""
        assert self._scheduler and self._uploader and self._upload_task and self._spool and self._client
        await self._stop_plan_client()
        await self._scheduler.stop()
        # A cancelled test's result may already be in the spool's commit group: commit it before the flush.
        await self._spool.settle()
        remaining = await self._uploader.flush(float(self.config.scheduler.shutdown_flush))
        self._uploader.stop()
        await asyncio.gather(self._upload_task, return_exceptions=True)
        counters = await self._spool.counters()
        await self._client.close()
        self._spool.close()
        log.info(kv("probe_stopped", tests=self._scheduler.tests_run, left_in_spool=remaining,
                    measured_total=counters.measured_total, acked_total=counters.acked_total,
                    dropped_total=counters.dropped_total))
        return 0


async def run_agent(config: ProbeConfig) -> int:
    """Entry point of `qiancheng-probe run`."""
    logs.setup(config.log_level)
    return await Agent(config).run()
