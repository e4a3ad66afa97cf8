"""Download goodput (kind `download`): N parallel streams from the responder's `/download?bytes=N`, or
from any HTTP(S) URL such as a CDN object (fetched again while the test lasts). See throughput.py."""

from __future__ import annotations

from qiancheng.core.kind_settings import DownloadSettings
from qiancheng.core.result import Target

from .outcome import Outcome
from .throughput import measure_throughput

__all__ = ["measure"]


async def measure(target: Target, settings: DownloadSettings) -> Outcome:
    """One download test: goodput figures over the measured window."""
    return await measure_throughput("download", target, settings)
