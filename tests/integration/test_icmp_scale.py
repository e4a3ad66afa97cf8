"""ICMP at scale on loopback: trains in a row share one socket, which closes once idle (and when its event loop
ends); a thousand per-second targets through the scheduler are all answered, with no failed send and no
datagram dropped by the socket."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest

from qiancheng.core.kind_settings import IcmpSettings
from qiancheng.core.result import Result, Target
from qiancheng.core.units import Duration
from qiancheng.probes.config import Job
from qiancheng.probes.measure import icmp, run
from qiancheng.probes.scheduler import Scheduler
from tests.integration.helpers import require_root

ONE_ECHO = IcmpSettings(interval=Duration(1.0), count=1, timeout=Duration(0.5))


def _socket_drops(inode: int) -> int:
    """The kernel's drop count of one raw socket (last column of /proc/net/raw)."""
    for line in Path("/proc/net/raw").read_text().splitlines()[1:]:
        columns = line.split()
        if columns[9] == str(inode):
            return int(columns[-1])
    raise AssertionError(f"socket {inode} not in /proc/net/raw")


def test_trains_in_a_row_share_one_socket_that_closes_when_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    monkeypatch.setattr(icmp, "_IDLE_CLOSE_SECONDS", 0.3)
    opened: list[icmp._EchoSocket] = []

    def current() -> icmp._EchoSocket:
        echo = icmp._sockets[asyncio.get_running_loop()][socket.AF_INET]
        if echo not in opened:
            opened.append(echo)
        return echo

    async def main() -> None:
        for i in range(5):
            result = await run("icmp", Target(name=f"t{i}", address=f"127.0.0.{i + 1}"), ONE_ECHO)
            assert result.success, result.detail
            current()
        assert len(opened) == 1 and not opened[0].closed  # one socket for all five trains
        await asyncio.sleep(0.6)
        assert opened[0].closed and opened[0].sock.fileno() == -1
        assert socket.AF_INET not in icmp._sockets[asyncio.get_running_loop()]
        result = await run("icmp", Target(name="again", address="127.0.0.1"), ONE_ECHO)
        assert result.success, result.detail
        assert current() is not opened[0]  # a fresh socket after the idle close

    asyncio.run(main())
    assert len(opened) == 2 and opened[1].closed  # the loop's end closed the second one


def test_an_idle_socket_waits_quietly_while_a_long_train_holds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    monkeypatch.setattr(icmp, "_IDLE_CLOSE_SECONDS", 0.1)

    async def main() -> float:
        assert (await run("icmp", Target(name="first", address="127.0.0.1"), ONE_ECHO)).success  # starts the closer
        train = IcmpSettings(interval=Duration(5), count=5, packet_interval=Duration(0.25), timeout=Duration(0.5))
        cpu = time.process_time()
        result = await run("icmp", Target(name="long", address="127.0.0.1"), train)  # a second of holding it
        assert result.success and result.figures["packets_received"] == 5
        return time.process_time() - cpu

    # A closer polling in a loop while the socket is in use would burn the whole second.
    assert asyncio.run(main()) < 0.3


def test_a_thousand_per_second_targets_all_answered_without_send_errors_or_drops() -> None:
    require_root()
    addresses = [f"127.78.{i // 250}.{i % 250 + 1}" for i in range(1000)]
    jobs = [Job(target=Target(name=f"t{i}", address=a), kind="icmp", settings=ONE_ECHO) for i, a in enumerate(addresses)]
    results: list[Result] = []

    async def sink(_: Job, result: Result) -> None:
        results.append(result)

    async def main() -> int:
        # A first train opens the shared socket; trains that follow within the idle time keep using it.
        assert (await run("icmp", Target(name="first", address="127.0.0.1"), ONE_ECHO)).success
        echo = icmp._sockets[asyncio.get_running_loop()][socket.AF_INET]
        scheduler = Scheduler(f"scale-{os.getpid()}", sink, max_concurrency=32)
        scheduler.apply(jobs)
        await asyncio.sleep(2.2)  # every job's slot comes round at least twice
        await scheduler.stop()
        assert icmp._sockets[asyncio.get_running_loop()][socket.AF_INET] is echo and not echo.closed
        return _socket_drops(os.fstat(echo.sock.fileno()).st_ino)

    drops = asyncio.run(main())
    assert drops == 0
    assert len(results) >= 2000
    assert {r.target.name for r in results} == {f"t{i}" for i in range(1000)}
    failed = [(r.target.address, r.error, r.detail) for r in results if not r.success]
    assert not failed, failed[:5]
    assert not [r.info["send_errors"] for r in results if "send_errors" in r.info]
    assert all(r.figures["packets_received"] == 1 and r.info["send_timestamps"] == "kernel" for r in results)
