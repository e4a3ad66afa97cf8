"""TCP connect train (kind `tcp`): `count` handshakes, one every `packet_interval`, each timed alone.

A sample is the time from `connect()` to the socket becoming writable: one SYN → SYN-ACK round trip
plus the kernel's work, the figure `curl -w %{time_connect}` and tcpping report. Connects are started
on schedule, each on its own socket, so one slow handshake does not delay the next. Each connection is
closed with a reset (SO_LINGER 0), so a probe running thousands of trains leaves no TIME_WAIT behind and
the target's application sees no request.

A connect with no answer within `timeout` is lost (the kernel's SYN retry comes later than the default
timeout). If no connect succeeds the result fails with `refused` (the port is closed), `unreachable`
(no route, ICMP unreachable) or `timeout`; the counts stay in the figures.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from collections import Counter

from qiancheng.core.addresses import UNREACHABLE_ERRNOS, resolve, split_host_port
from qiancheng.core.errors import MeasurementError
from qiancheng.core.kind_settings import TcpSettings
from qiancheng.core.result import Target
from qiancheng.core.stats import train_stats

from .outcome import Outcome

__all__ = ["measure"]


_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


async def _connect_once(family: socket.AddressFamily, address: str, port: int, timeout: float) -> tuple[float | None, str]:
    """One handshake: (seconds, '') on success, else (None, why) with why `timeout`, `refused`, ..."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    writable: asyncio.Future[int] = loop.create_future()

    def on_writable() -> None:
        if not writable.done():
            writable.set_result(time.perf_counter_ns())

    try:
        started_ns = time.perf_counter_ns()
        code = sock.connect_ex((address, port))
        if code == 0:
            return (time.perf_counter_ns() - started_ns) / 1e9, ""
        if code != errno.EINPROGRESS:
            return None, _why(code)
        loop.add_writer(sock.fileno(), on_writable)
        try:
            done_ns = await asyncio.wait_for(writable, timeout)
        except TimeoutError:
            return None, "timeout"
        finally:
            loop.remove_writer(sock.fileno())
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return ((done_ns - started_ns) / 1e9, "") if code == 0 else (None, _why(code))
    finally:
        sock.close()


def _why(code: int) -> str:
    if code == errno.ECONNREFUSED:
        return "refused"
    if code in UNREACHABLE_ERRNOS:
        return "unreachable"
    if code == errno.ETIMEDOUT:
        return "timeout"
    return errno.errorcode.get(code, str(code)).lower()


async def measure(target: Target, settings: TcpSettings) -> Outcome:
    """One connect train: per-connect samples and the train's statistics."""
    try:
        host, port = split_host_port(target.address, settings.port)
    except ValueError as error:
        raise MeasurementError("error", str(error)) from None
    family, address = await resolve(host, port, settings.family)
    loop = asyncio.get_running_loop()
    first = loop.time()
    connects: list[asyncio.Task[tuple[float | None, str]]] = []
    try:
        for index in range(settings.count):
            delay = first + index * float(settings.packet_interval) - loop.time()
            if index and delay > 0:
                await asyncio.sleep(delay)
            connects.append(asyncio.create_task(_connect_once(family, address, port, float(settings.timeout))))
        outcomes = await asyncio.gather(*connects)
    finally:
        for task in connects:
            task.cancel()

    samples = [seconds for seconds, _ in outcomes]
    failures = Counter(why for seconds, why in outcomes if seconds is None)
    stats = train_stats(samples)
    shown = f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}"
    info = {"address": shown}
    if failures:
        info["failures"] = ", ".join(f"{why} {n}" for why, n in failures.most_common())
    reason: str | None = None
    detail: str | None = None
    if stats.received == 0:
        why = failures.most_common(1)[0][0]
        reason = why if why in ("refused", "unreachable", "timeout") else "error"
        detail = f"no connect to {shown} succeeded: {info['failures']}"
    return Outcome(
        error=reason,
        detail=detail,
        figures=stats.figures(),
        info=info,
        samples=samples,
    )
