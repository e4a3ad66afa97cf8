"""What one test of a kind found; `measure.run` stamps kind, target and times on it to make the result."""

from __future__ import annotations

from dataclasses import dataclass, field

from qiancheng.core.result import Hop

__all__ = ["Outcome"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """Figures in base units, text facts, per-packet samples (None for a packet lost), the hops of a
    traced path and, when the test failed, the reason (one of qiancheng.core.result.REASONS) with a detail for people."""

    figures: dict[str, float] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)
    samples: list[float | None] = field(default_factory=list)
    hops: list[Hop] = field(default_factory=list)
    error: str | None = None
    detail: str | None = None

    @property
    def success(self) -> bool:
        """True when the test found what it was looking for."""
        return self.error is None
