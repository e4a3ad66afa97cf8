"""The throughput engine shared by kinds `download` and `upload`.

N parallel TCP streams (throughput_streams.py) move bytes while an asyncio sampler reads their
counters every `sample_interval`. The first phase, the warm-up, is discarded: it lasts until slow start
is over (the interval rate stopped growing, or for uploads every stream's TCP left slow start) and at
most `warmup`. Then goodput is measured over the fixed `window`: the mean, the p90 of the interval
samples, per-stream rates and bytes, plus TCP_INFO figures. A byte cap and a time cap end the test
early; the window then covers what was measured and info `stopped_by` says which cap ended it.

Goodput counts application bytes at the receiving end of each stream. Download: the bytes the probe
read. Upload: what the responder's TCP has received as TCP_INFO at the probe tells it (bytes_acked
plus the SACKed segments, minus the request head); read every sample without a round trip to the
responder, which only reports its count when the body is complete. Received bytes may still sit in
the responder's socket buffer, but that is a bounded offset (one receive buffer) at both ends of the
window, not a drift.

Loaded latency (loaded_latency.py) runs beside the window; CDN facts (cdn.py) come from the first download
response's headers.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

from qiancheng.core.addresses import resolve, split_host_port
from qiancheng.core.clock import monotonic
from qiancheng.core.errors import MeasurementError
from qiancheng.core.kind_settings import ThroughputSettings
from qiancheng.core.responder_secret import authorization_header, read_secret
from qiancheng.core.result import Target
from qiancheng.core.stats import percentile

from .cdn import cache_facts
from .loaded_latency import LatencyProbes
from .outcome import Outcome
from .progress import Progress, report
from .tcp_info import TcpInfo
from .throughput_streams import DownloadStream, Endpoint, Stream, UploadStream

__all__ = [
    "Direction",
    "Sample",
    "RESPONDER_HTTP_PORT",
    "REQUEST_BYTES",
    "interval_rates",
    "slow_start_over",
    "window_figures",
    "measure_throughput",
    "stream_url",
]

Direction = Literal["download", "upload"]

RESPONDER_HTTP_PORT = 9311
# The most one request asks the responder for (its own cap is 10 GiB by default); a stream whose
# share of the byte cap is larger asks again on a new connection when one request is done.
REQUEST_BYTES = 8 * 1024**3
# The warm-up is over once this many interval rates in a row stayed below GROWTH times the best before.
_STEADY_INTERVALS = 2
_GROWTH = 1.1
_JOIN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Sample:
    """The cumulative goodput bytes of every stream at one moment (monotonic seconds)."""

    seconds: float
    stream_bytes: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.stream_bytes)


def interval_rates(samples: Sequence[Sample]) -> list[float]:
    """Total goodput in bit/s between each pair of consecutive samples."""
    return [
        (b.total - a.total) * 8 / (b.seconds - a.seconds)
        for a, b in zip(samples, samples[1:])
        if b.seconds > a.seconds
    ]


def slow_start_over(rates: Sequence[float], growth: float = _GROWTH, steady: int = _STEADY_INTERVALS) -> bool:
    """True when each of the last `steady` rates stayed within a factor `growth` of the best rate before it.

    Slow start roughly doubles the rate every round trip, so while it lasts each interval beats the
    best so far by far more than 10 %; a link that is full stops growing. A dip does not count as
    steady either: it is a loss being repaired, after which in-order data arrives in a leap, and a
    window that began in the dip would count the leap as its own goodput. Zero rates (still
    connecting) never count.
    """
    if len(rates) <= steady:
        return False
    for index in range(len(rates) - steady, len(rates)):
        best_before = max(rates[:index])
        if best_before <= 0 or not best_before / growth <= rates[index] < growth * best_before:
            return False
    return True


def window_figures(samples: Sequence[Sample]) -> dict[str, float]:
    """Mean and p90 goodput (bit/s), bytes, duration and per-stream rates over the samples' span."""
    if len(samples) < 2 or samples[-1].seconds <= samples[0].seconds:
        raise ValueError("a window needs two samples at different times")
    first, last = samples[0], samples[-1]
    seconds = last.seconds - first.seconds
    moved = last.total - first.total
    figures = {
        "throughput_bits_per_second": moved * 8 / seconds,
        "throughput_p90_bits_per_second": percentile(interval_rates(samples), 90),
        "bytes": float(moved),
        "window_seconds": seconds,
        "streams": float(len(first.stream_bytes)),
    }
    for index, (begin, end) in enumerate(zip(first.stream_bytes, last.stream_bytes)):
        figures[f"stream_{index}_bits_per_second"] = (end - begin) * 8 / seconds
    return figures


def stream_url(direction: Direction, address: str, url: str | None, streams: int, max_bytes: int) -> str:
    """The URL every stream uses: `url`, else a URL target as is, else the responder at the address.

    A responder `/download` URL without `bytes` gets each stream's share of the byte cap (at most
    REQUEST_BYTES).
    """
    given = url or (address if "://" in address else None)
    if given is None:
        host, port = split_host_port(address, RESPONDER_HTTP_PORT)
        shown = f"[{host}]" if ":" in host else host
        given = f"http://{shown}:{port}/{direction}"
    parts = urlsplit(given)
    if direction == "download" and parts.path.endswith("/download"):
        query = dict(parse_qsl(parts.query))
        if "bytes" not in query:
            query["bytes"] = str(min(math.ceil(max_bytes / streams), REQUEST_BYTES))
            given = parts._replace(query=urlencode(query)).geturl()
    return given


async def _endpoint(url: str, settings: ThroughputSettings) -> Endpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MeasurementError("error", f"not an http(s) URL: {url[:200]!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise MeasurementError("error", f"bad port in {url[:200]!r}: {error}") from None
    family, address = await resolve(parts.hostname, port)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        authorization = authorization_header(read_secret(settings.secret_file)) if settings.secret_file else None
    except ValueError as error:
        raise MeasurementError("error", f"secret_file: {error}") from None
    return Endpoint(parts.scheme, parts.hostname, port, path, family, address, settings.verify_tls, authorization)


class _Run:
    """One test in progress: the streams, their samples, and the phase they are in."""

    def __init__(self, direction: Direction, target: Target, settings: ThroughputSettings, endpoint: Endpoint) -> None:
        self.direction = direction
        self.target = target
        self.settings = settings
        loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()

        def poke() -> None:  # from a stream's thread
            try:
                loop.call_soon_threadsafe(self.changed.set)
            except RuntimeError:  # the loop is closed: a stream that outlived its test has no one to tell
                pass

        budget = math.ceil(int(settings.max_bytes) / settings.streams)
        kind = DownloadStream if direction == "download" else UploadStream
        self.streams: list[Stream] = [
            kind(i, endpoint, budget, float(settings.timeout), poke, REQUEST_BYTES) for i in range(settings.streams)
        ]
        self.samples: list[Sample] = []
        self.window_start: int | None = None
        self.stopped_by = ""
        self.tcp: list[TcpInfo | None] = []

    def counts(self) -> tuple[int, ...]:
        if self.direction == "upload":
            return tuple(cast(UploadStream, s).acked_body_bytes() for s in self.streams)
        return tuple(s.bytes for s in self.streams)

    def _check(self) -> None:
        for stream in self.streams:
            if stream.error is not None:
                raise MeasurementError(stream.error.reason, stream.error.detail)

    async def _wait(self, until: float) -> None:
        """Sleep until the monotonic time `until`, or until a stream changes state."""
        delay = until - monotonic()
        if delay > 0 and not self.changed.is_set():
            try:
                async with asyncio.timeout(delay):
                    await self.changed.wait()
            except TimeoutError:
                pass
        self.changed.clear()

    async def connect(self) -> None:
        """Start every stream and wait until each has its response head (or 100 Continue)."""
        for stream in self.streams:
            stream.start()
        deadline = monotonic() + 2 * float(self.settings.timeout) + 1.0
        while not all(s.ready for s in self.streams):
            self._check()
            if all(s.finished for s in self.streams) or monotonic() > deadline:
                raise MeasurementError("timeout", f"{sum(not s.ready for s in self.streams)} of {len(self.streams)} streams got no response in time")
            await self._wait(monotonic() + 0.05)

    async def sample(self, started: float, latency: LatencyProbes | None) -> None:
        """Sample until the window is over or a cap stops the test; the warm-up ends on its own."""
        settings = self.settings
        tick, warmup, window = float(settings.sample_interval), float(settings.warmup), float(settings.window)
        phase_started = monotonic()
        self.samples.append(Sample(phase_started, self.counts()))
        next_at = phase_started + tick
        stop_latency = asyncio.Event()
        loaded: asyncio.Task[None] | None = None
        try:
            while True:
                await self._wait(next_at)
                self._check()
                now = monotonic()
                finished = all(s.finished for s in self.streams)
                if now < next_at and not finished:
                    continue
                while next_at <= now:
                    next_at += tick
                self.samples.append(Sample(now, self.counts()))
                self._progress(now - phase_started, warmup if self.window_start is None else window)
                if self.window_start is None:
                    if now - phase_started >= warmup or self._slow_start_over():
                        self.window_start = len(self.samples) - 1
                        phase_started = now
                        if latency is not None:
                            loaded = asyncio.create_task(latency.run_loaded(stop_latency))
                else:
                    if latency is not None:
                        self._self_probes(latency)
                    if now - phase_started >= window:
                        break
                if finished or self.samples[-1].total >= settings.max_bytes:
                    self.stopped_by = "byte_cap"
                    break
                if now - started >= settings.max_seconds:
                    self.stopped_by = "time_cap"
                    break
            # TCP_INFO at the end of the window, while every connection is still up
            self.tcp = [s.info() for s in self.streams]
        finally:
            stop_latency.set()
            if loaded is not None:
                await loaded

    def _self_probes(self, latency: LatencyProbes) -> None:
        """The load connections' own smoothed RTTs (TCP_INFO), the draft's self probes."""
        for info in (s.info() for s in self.streams):
            if info is not None:
                latency.add_self_probe(_rtt_us(self.direction, info) / 1e6)

    def _slow_start_over(self) -> bool:
        if slow_start_over(interval_rates(self.samples)):
            return True
        if self.direction == "upload":
            infos = [s.info() for s in self.streams]
            return all(info is not None and not info.in_slow_start for info in infos)
        return False

    def _progress(self, elapsed: float, planned: float) -> None:
        rates = interval_rates(self.samples[-2:])
        report(Progress(
            kind=self.direction, target=self.target.name, phase="warmup" if self.window_start is None else "window",
            elapsed_seconds=elapsed, planned_seconds=planned, rate_bits_per_second=rates[-1] if rates else 0.0,
            bytes_total=self.samples[-1].total,
        ))

    async def stop(self) -> None:
        for stream in self.streams:
            stream.stop()
        await asyncio.to_thread(self._join)

    def _join(self) -> None:
        for stream in self.streams:
            stream.join(_JOIN_SECONDS)

    def figures(self) -> tuple[dict[str, float], dict[str, str]]:
        """The result's figures and info once sampling is over."""
        info: dict[str, str] = {}
        start = self.window_start
        if start is None:
            # a cap ended the test during the warm-up: the window is all there is, slow start included
            start = 0
            info["warmup"] = f"not over when {self.stopped_by} ended the test: the window includes slow start"
        window = self.samples[start:]
        if len(window) < 2 or window[-1].seconds <= window[0].seconds:
            raise MeasurementError("error", f"{self.stopped_by or 'the test'} ended before a single sample interval")
        figures = window_figures(window)
        figures["bytes_total"] = float(self.samples[-1].total)
        figures["warmup_seconds"] = window[0].seconds - self.samples[0].seconds
        figures.update(self._tcp_figures())
        if self.stopped_by:
            info["stopped_by"] = self.stopped_by
        return figures, info

    def _tcp_figures(self) -> dict[str, float]:
        infos = [i for i in self.tcp if i is not None]
        if not infos:
            return {}
        figures: dict[str, float] = {}
        if self.direction == "upload":
            figures["tcp_retransmits"] = float(sum(i.total_retrans for i in infos))
            figures["tcp_cwnd_segments"] = sum(i.snd_cwnd for i in infos) / len(infos)
        rtts = [rtt for rtt in (_rtt_us(self.direction, i) for i in infos) if rtt]
        if rtts:
            figures["tcp_rtt_seconds"] = sum(rtts) / len(rtts) / 1e6
        return figures


def _rtt_us(direction: Direction, info: TcpInfo) -> int:
    """The smoothed RTT of a load connection as its end at the probe sees it, in µs (0: none yet).

    The sender's tcpi_rtt for uploads; for downloads the receiver's own estimate, tcpi_rcv_rtt (from
    how long a window's worth of data takes to arrive): its tcpi_rtt only comes from the ACKs of the
    few bytes it sent, the request.
    """
    return info.rtt_us if direction == "upload" else info.rcv_rtt_us


async def measure_throughput(direction: Direction, target: Target, settings: ThroughputSettings) -> Outcome:
    """One throughput test; goodput figures, or a MeasurementError saying why not."""
    started = monotonic()  # the warm-up and the caps count from here
    url = stream_url(direction, target.address, settings.url, settings.streams, int(settings.max_bytes))
    try:
        endpoint = await _endpoint(url, settings)
    except ValueError as error:
        raise MeasurementError("error", str(error)) from None
    probes = _latency_probes(url, settings, endpoint)
    latency: LatencyProbes | None = probes
    try:
        await probes.measure_idle()
    except OSError:  # the load's own connections will say what is wrong with the server
        latency = None
    run = _Run(direction, target, settings, endpoint)
    try:
        await run.connect()
        await run.sample(started, latency)
    finally:
        await run.stop()
    figures, info = run.figures()
    info["url"] = url[:1024]
    info["address"] = endpoint.address
    if latency is not None:
        figures.update(latency.figures())
    if direction == "download":
        cdn_figures, cdn_info = cache_facts(run.streams[0].headers)
        figures.update(cdn_figures)
        info.update(cdn_info)
    return Outcome(figures=figures, info=info)


def _latency_probes(url: str, settings: ThroughputSettings, endpoint: Endpoint) -> LatencyProbes:
    """Loaded-latency probes to the load's server (loaded_latency.py picks the responder's /ping, or a HEAD of
    any other URL)."""
    return LatencyProbes(url, address=endpoint.address, verify_tls=settings.verify_tls)
