"""Latency under load: foreign probes beside a download or upload, and responsiveness in round trips per minute.

Method: draft-ietf-ippm-responsiveness-06 ("Responsiveness under Working Conditions"), §5.3 (probes)
and §5.3.1 (aggregation). A foreign probe is one fresh connection to the server that carries the load
(the same address), on which three round trips are timed:

- `tcp_f`: the TCP handshake, from `connect()` to the socket being connected;
- `tls_f` (https only): the TLS handshake divided by its round trips (1 for TLS 1.3, 2 before; §5.3
  asks that it be normalised so), with no session resumption;
- `http_f`: an HTTP/1.1 request of a tiny object, from writing the request to the last response byte:
  `GET /ping` when the load runs against the qiancheng responder (`/download`, `/upload`, or its
  `/ping` given directly), else a `HEAD` of the load's own URL (any status counts: it is the round
  trip that is measured).

`measure_idle()` runs probes one after the other before the load; `run_loaded()` starts one every
`interval` while the load runs, each on schedule and on its own connection, so a slow probe never
delays the next. A round trip counts when it completed before the load stopped; probes still under
way then are cut off. Each round trip of a probe has `timeout` to finish (a full 250 ms queue makes
a TLS probe take three times that, so one deadline for the whole probe would lose exactly the samples
that matter).

Figures (seconds, and round trips per minute):

- `idle_rtt_seconds`, `loaded_rtt_seconds`: the median of all round trips (tcp_f, tls_f, http_f pooled)
  before and during the load; `bufferbloat_seconds` = loaded − idle;
- `responsiveness_rpm` (during the load) and `idle_rpm` (before it), from the single-sided 95 %
  trimmed means (§5.2 TMP, §5.3.1) of each kind of round trip, combined as `responsiveness()` says;
- `loaded_probes`: probes whose every round trip completed during the load; `loaded_probes_failed`:
  probes that failed during the load (timeout, refused...), their kinds in `failures`.

Timestamps: each probe runs in a thread of its own as blocking calls (connect, the TLS handshake,
send, recv), which release the GIL, and the clock is read as each call returns, as
probes/measure/http.py does: no turn of the event loop lies between an event and its mark.
"""

from __future__ import annotations

import asyncio
import errno
import math
import socket
import ssl
import statistics
import struct
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Final
from urllib.parse import urlsplit

import h11

from .http import USER_AGENT
from .http_phases import RequestPlan, parse_url, request_headers

__all__ = [
    "LatencyProbes",
    "ProbeRoundTrips",
    "TRIM_PERCENT",
    "probe_plan",
    "responsiveness",
    "trimmed_mean",
]

#: Share of the smallest samples a trimmed mean keeps (draft §5.2, TMP = 95 %).
TRIM_PERCENT = 95

_RESPONDER_LOAD_NAMES = frozenset({"download", "upload", "ping"})
_MAX_RESPONSE_BYTES = 64 * 1024  # a probe fetches a tiny object; anything larger is not one
_RECEIVE_BYTES = 16 * 1024
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER 0: no TIME_WAIT left by thousands of probes
_UNREACHABLE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})


# ---- the arithmetic of the draft (pure) ------------------------------------------------------------


def trimmed_mean(samples: Sequence[float], percent: int = TRIM_PERCENT) -> float:
    """Single-sided trimmed mean (draft §5.3.1): the mean of the `percent` % smallest samples.

    The n·(100 − percent)/100 largest samples, rounded down, are dropped: with 95 %, one of 20, none of 19.
    ValueError for no samples.
    """
    if not samples:
        raise ValueError("a trimmed mean needs at least one sample")
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be within 1..100, got {percent}")
    ordered = sorted(samples)
    dropped = len(ordered) * (100 - percent) // 100
    return statistics.fmean(ordered[: len(ordered) - dropped])


@dataclass(frozen=True, slots=True)
class ProbeRoundTrips:
    """Round-trip samples by kind, in seconds: foreign tcp_f, tls_f, http_f, and self probes (http_l)."""

    tcp: tuple[float, ...] = ()
    tls: tuple[float, ...] = ()
    http: tuple[float, ...] = ()
    self_probes: tuple[float, ...] = ()

    def pooled(self) -> list[float]:
        """Every foreign round trip, of all kinds."""
        return [*self.tcp, *self.tls, *self.http]


def responsiveness(samples: ProbeRoundTrips, tls: bool) -> float | None:
    """Round trips per minute (draft §5.3.1); None when a kind the formula needs has no sample.

    Foreign RPM = 60 / mean(TM(tcp_f), TM(tls_f), TM(http_f)), the TLS term only for https (§5.3.1.2:
    no zero stands in for it). The draft averages it with the RPM of self probes, HTTP/2 requests on
    the load-generating connections (60 / TM(http_l)); where those cannot be multiplexed (HTTP/1.1, as
    here) it allows the TCP stack's RTT estimate of the load connections instead (§5.3). So: with
    self-probe samples, RPM = (foreign RPM + 60 / TM(self)) / 2; without them, the foreign RPM alone.
    """
    kinds = [samples.tcp, samples.tls, samples.http] if tls else [samples.tcp, samples.http]
    if any(not kind for kind in kinds):
        return None
    foreign_seconds = statistics.fmean(trimmed_mean(kind) for kind in kinds)
    foreign_rpm = 60.0 / foreign_seconds if foreign_seconds > 0 else None
    if foreign_rpm is None:
        return None
    if not samples.self_probes:
        return foreign_rpm
    self_seconds = trimmed_mean(samples.self_probes)
    if self_seconds <= 0:
        return foreign_rpm
    return (foreign_rpm + 60.0 / self_seconds) / 2


def probe_plan(url: str) -> tuple[RequestPlan, str]:
    """The probe's request for a load against `url`: (plan, method); ValueError for a bad URL.

    The responder's load endpoints (`.../download`, `.../upload`) get `GET .../ping` beside them on the
    same server, as does a `.../ping` URL itself; any other URL a `HEAD` of itself.
    """
    plan = parse_url(url)
    directory, _, name = urlsplit(url.strip()).path.rpartition("/")
    if name in _RESPONDER_LOAD_NAMES:
        return replace(plan, target=f"{directory}/ping"), "GET"
    return plan, "HEAD"


def tls_round_trips(version: str | None) -> int:
    """Round trips of a full TLS handshake before data can flow: 1 for TLS 1.3, 2 for earlier versions."""
    return 1 if version == "TLSv1.3" else 2


# ---- one foreign probe (blocking, in a thread of its own) -------------------------------------------


@dataclass(frozen=True, slots=True)
class _Connection:
    """What every probe does: connect to the load's server, TLS or not, ask for `plan.target` with `method`.

    Each step (connect, handshake, request) has `timeout` seconds.
    """

    family: socket.AddressFamily
    address: tuple[str, int]
    plan: RequestPlan
    method: str
    context: ssl.SSLContext | None
    timeout: float
    #: the request every probe sends, made and checked once (h11 validates its headers as it is made)
    request: h11.Request


class _ForeignProbe:
    """One fresh connection, timed round trip by round trip; marks are perf_counter ns, None if not reached.

    Runs as plain blocking calls in its own thread; `abort()` (from any thread) cuts it off.
    """

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self._sock: socket.socket | None = None
        self._aborted = False
        self.connect_start: int | None = None
        self.connect_done: int | None = None
        self.tls_done: int | None = None
        self.tls_round_trips = 1
        self.request_start: int | None = None
        self.response_done: int | None = None
        self.error: str | None = None

    def run(self) -> None:
        """The whole probe; never raises: a failure is kept in `error` (timeout, refused, ...)."""
        try:
            self._run()
        except TimeoutError:
            self.error = "timeout"
        except ConnectionRefusedError:
            self.error = "refused"
        except ssl.SSLError:
            self.error = "tls_error"
        except h11.RemoteProtocolError:
            self.error = "protocol"
        except OSError as error:
            self.error = "unreachable" if error.errno in _UNREACHABLE_ERRNOS else "error"
        finally:
            if self._aborted:
                self.error = None  # cut off at the end of the load: not a failure of the path
            if self._sock is not None:
                self._sock.close()

    def abort(self) -> None:
        """Stop the probe where it is: its blocking call returns with an error, which is not counted."""
        self._aborted = True
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _run(self) -> None:
        conn = self._connection
        connection = h11.Connection(h11.CLIENT)
        wire = (connection.send(conn.request) or b"") + (connection.send(h11.EndOfMessage()) or b"")
        sock = socket.socket(conn.family, socket.SOCK_STREAM)
        self._sock = sock
        if self._aborted:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(conn.timeout)
        self.connect_start = time.perf_counter_ns()
        sock.connect(conn.address)
        self.connect_done = time.perf_counter_ns()
        stream: socket.socket = sock
        if conn.context is not None:
            stream = conn.context.wrap_socket(
                sock, server_hostname=conn.plan.host, do_handshake_on_connect=False, suppress_ragged_eofs=True
            )
            self._sock = stream
            stream.settimeout(conn.timeout)
            stream.do_handshake()
            done = time.perf_counter_ns()
            self.tls_round_trips = tls_round_trips(stream.version())  # set before the mark that publishes it
            self.tls_done = done
        self.request_start = time.perf_counter_ns()
        stream.sendall(wire)
        received = 0
        while True:
            data = stream.recv(_RECEIVE_BYTES)
            now = time.perf_counter_ns()
            received += len(data)
            if received > _MAX_RESPONSE_BYTES:
                raise h11.RemoteProtocolError("response larger than a tiny object")
            connection.receive_data(data)
            while (event := connection.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.EndOfMessage):
                    self.response_done = now
                    return
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    raise h11.RemoteProtocolError("connection closed before the response ended")
            if not data:
                raise h11.RemoteProtocolError("connection closed before the response ended")

    def round_trips(self, until_ns: int | None = None) -> tuple[float | None, float | None, float | None]:
        """(tcp_f, tls_f, http_f) in seconds, each None unless it completed (by `until_ns`, if given)."""

        def span(start: int | None, end: int | None, divisor: int = 1) -> float | None:
            if start is None or end is None or (until_ns is not None and end > until_ns):
                return None
            return max(0, end - start) / 1e9 / divisor

        return (
            span(self.connect_start, self.connect_done),
            span(self.connect_done, self.tls_done, self.tls_round_trips),
            span(self.request_start, self.response_done),
        )


#: Probes run on threads that are kept and reused: a thread started for each probe, and the request
#: made for each, cost a fifth of a probe's CPU (on loopback: 0.40-0.50 ms per probe, 0.33-0.35 ms
#: now). Under a full queue probes overlap for seconds (three round trips of up to `timeout` each, one
#: probe every `interval`: 60 at the defaults), so the pool is sized never to hold back a start.
_PROBE_THREADS: Final = 128
_probe_pool: ThreadPoolExecutor | None = None


def _start(probe: _ForeignProbe) -> asyncio.Future[None]:
    """Run the probe on a thread of the probes' pool; the future settles when it ends."""
    global _probe_pool
    if _probe_pool is None:
        _probe_pool = ThreadPoolExecutor(_PROBE_THREADS, thread_name_prefix="qiancheng-latency-probe")
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not finished.done():
            finished.set_result(None)

    def body() -> None:
        probe.run()
        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop has closed: nobody waits for this probe any more
            pass

    _probe_pool.submit(body)
    return finished


# ---- the public API -------------------------------------------------------------------------------

_contexts: dict[bool, ssl.SSLContext] = {}


def _new_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context() if verify else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


class LatencyProbes:
    """Foreign latency probes to the server of a load: idle before it, loaded during it; see the module doc.

    `url` is the load's URL; `address` the server's IP the load connects to (default: the URL's host,
    resolved once); `interval` seconds between loaded probes; `timeout` seconds per round trip.
    """

    def __init__(
        self,
        url: str,
        *,
        address: str | None = None,
        verify_tls: bool = True,
        interval: float = 0.1,
        timeout: float = 2.0,
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        self._plan, self._method = probe_plan(url)
        self._address = address
        self._verify_tls = verify_tls
        self._interval = interval
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._idle: list[_ForeignProbe] = []
        self._loaded: list[_ForeignProbe] = []
        self._loaded_until_ns: int | None = None
        self._self_probes: list[float] = []

    @property
    def tls(self) -> bool:
        return self._plan.tls

    async def _prepared(self) -> _Connection:
        """Resolve the server and build the TLS context once, off the event loop, before any probe."""
        if self._connection is not None:
            return self._connection
        host = self._address or self._plan.host
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, self._plan.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        family, _, _, _, sockaddr = infos[0]
        context: ssl.SSLContext | None = None
        if self._plan.tls:
            context = _contexts.get(self._verify_tls)
            if context is None:
                context = _contexts[self._verify_tls] = await asyncio.to_thread(_new_context, self._verify_tls)
        request = h11.Request(method=self._method, target=self._plan.target,
                              headers=request_headers(self._plan, USER_AGENT, {}))  # fmt: skip
        self._connection = _Connection(
            family, (str(sockaddr[0]), int(sockaddr[1])), self._plan, self._method, context, self._timeout, request
        )
        return self._connection

    async def measure_idle(self, rounds: int = 5) -> None:
        """`rounds` probes one after the other, before the load starts (socket.gaierror if the host is unknown).

        The first failure ends them: a server that does not answer would otherwise hold up the load by
        `rounds` timeouts, and the next probe would fail alike.
        """
        connection = await self._prepared()
        for _ in range(rounds):
            probe = _ForeignProbe(connection)
            self._idle.append(probe)
            await _start(probe)
            if probe.error is not None:
                break

    async def run_loaded(self, stop: asyncio.Event) -> None:
        """A probe every `interval` until `stop` is set; round trips still under way then are cut off."""
        connection = await self._prepared()
        loop = asyncio.get_running_loop()
        running: list[tuple[_ForeignProbe, asyncio.Future[None]]] = []
        first = loop.time()
        index = 0
        while not stop.is_set():
            probe = _ForeignProbe(connection)
            self._loaded.append(probe)
            running.append((probe, _start(probe)))
            # the next slot of the grid; slots a busy loop let pass are skipped, not made up in a burst
            index = max(index + 1, math.ceil((loop.time() - first) / self._interval))
            try:
                async with asyncio.timeout(max(0.0, first + index * self._interval - loop.time())):
                    await stop.wait()
            except TimeoutError:
                pass
        self._loaded_until_ns = time.perf_counter_ns()
        for probe, finished in running:
            if not finished.done():
                probe.abort()

    def add_self_probe(self, rtt_seconds: float) -> None:
        """A round trip seen on a load-generating connection during the load (e.g. TCP_INFO's tcpi_rtt).

        Optional: with such samples `responsiveness_rpm` averages foreign and self RPM as the draft does.
        """
        if rtt_seconds > 0:
            self._self_probes.append(rtt_seconds)

    @property
    def failures(self) -> Counter[str]:
        """Kinds of failure of the probes made during the load (timeout, refused, tls_error, ...)."""
        return Counter(probe.error for probe in self._loaded if probe.error is not None)

    def idle_round_trips(self) -> ProbeRoundTrips:
        return _collect(self._idle, None)

    def loaded_round_trips(self) -> ProbeRoundTrips:
        samples = _collect(self._loaded, self._loaded_until_ns)
        return replace(samples, self_probes=tuple(self._self_probes))

    def figures(self) -> dict[str, float]:
        """The loaded-latency figures (issue 5 contract); a figure is absent when its samples are."""
        idle, loaded = self.idle_round_trips(), self.loaded_round_trips()
        figures: dict[str, float] = {}
        if idle_pooled := idle.pooled():
            figures["idle_rtt_seconds"] = statistics.median(idle_pooled)
        if loaded_pooled := loaded.pooled():
            figures["loaded_rtt_seconds"] = statistics.median(loaded_pooled)
        if "idle_rtt_seconds" in figures and "loaded_rtt_seconds" in figures:
            figures["bufferbloat_seconds"] = figures["loaded_rtt_seconds"] - figures["idle_rtt_seconds"]
        if (rpm := responsiveness(loaded, self.tls)) is not None:
            figures["responsiveness_rpm"] = rpm
        if (rpm := responsiveness(idle, self.tls)) is not None:
            figures["idle_rpm"] = rpm
        until = self._loaded_until_ns
        figures["loaded_probes"] = float(sum(1 for probe in self._loaded if _complete(probe, self.tls, until)))
        figures["loaded_probes_failed"] = float(sum(self.failures.values()))
        return figures


def _complete(probe: _ForeignProbe, tls: bool, until_ns: int | None) -> bool:
    tcp, tls_f, http = probe.round_trips(until_ns)
    return tcp is not None and http is not None and (tls_f is not None or not tls)


def _collect(probes: Iterable[_ForeignProbe], until_ns: int | None) -> ProbeRoundTrips:
    tcp: list[float] = []
    tls: list[float] = []
    http: list[float] = []
    for probe in probes:
        for samples, value in zip((tcp, tls, http), probe.round_trips(until_ns)):
            if value is not None:
                samples.append(value)
    return ProbeRoundTrips(tuple(tcp), tuple(tls), tuple(http))
