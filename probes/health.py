"""The box's health as every batch reports it: how long the probe has run, how loaded the box is, and
whether its clock is synchronised (every timestamp the probe writes rests on it).

The clock state is the kernel's own (adjtimex(2) read-only, as `timedatectl` and `chronyc` read it): the
NTP daemon, whichever it is (chrony, ntpd, systemd-timesyncd), clears STA_UNSYNC once it disciplines the
clock and keeps `maxerror`, the kernel's bound on the clock's error, which grows by 500 ppm while no
daemon updates it. Where adjtimex is not available the clock figures are left out, never guessed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["ClockState", "clock_state", "HostHealth"]

_TIME_ERROR: Final = 5  # adjtimex's answer when the clock is not synchronised
_STA_UNSYNC: Final = 0x0040


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (Linux); `modes` 0 reads without changing anything."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_reserved", ctypes.c_int * 11),
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class ClockState:
    synced: bool
    #: the kernel's bound on the clock's error, seconds (16 s once it has gone unsynchronised long enough)
    maxerror_seconds: float


def _adjtimex() -> Callable[[ctypes._Pointer[_Timex]], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function = libc.adjtimex
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.POINTER(_Timex)]
    function.restype = ctypes.c_int
    return function


_ADJTIMEX = _adjtimex()


def clock_state() -> ClockState | None:
    """The kernel's clock synchronisation state, or None where it cannot be read."""
    if _ADJTIMEX is None:
        return None
    timex = _Timex()  # modes 0: a read
    state = _ADJTIMEX(ctypes.pointer(timex))
    if state < 0:
        return None
    synced = state != _TIME_ERROR and not timex.status & _STA_UNSYNC
    return ClockState(synced=synced, maxerror_seconds=timex.maxerror / 1e6)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may run on, not the whole machine's
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class HostHealth:
    """Figures for a batch's `stats`: all numbers, so that older collectors take them as they are."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._started = monotonic()

    def stats(self) -> dict[str, float]:
        figures = {"uptime_seconds": round(self._monotonic() - self._started, 3), "cpus": float(_cpus())}
        try:
            figures["load1"] = os.getloadavg()[0]
        except OSError:
            pass
        clock = clock_state()
        if clock is not None:
            figures["clock_synced"] = 1.0 if clock.synced else 0.0
            figures["clock_maxerror_seconds"] = clock.maxerror_seconds
        return figures
