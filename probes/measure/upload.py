"""Upload goodput (kind `upload`): N parallel streams POSTing to the responder's `/upload`.
See throughput.py."""

from __future__ import annotations

from qiancheng.core.kind_settings import UploadSettings
from qiancheng.core.result import Target

from .outcome import Outcome
from .throughput import measure_throughput

__all__ = ["measure"]


async def measure(target: Target, settings: UploadSettings) -> Outcome:
    """One upload test: goodput figures over the measured window."""
    return await measure_throughput("upload", target, settings)
