"""One exception root for the project; subclasses also inherit the matching builtin."""

from __future__ import annotations

__all__ = ["QianchengError", "ConfigError", "MeasurementError"]


class QianchengError(Exception):
    """Root of every error qiancheng raises on purpose."""


class ConfigError(QianchengError, ValueError):
    """A configuration file that cannot be used: says which file, line and field, and why."""

    def __init__(self, file: str, reason: str, field: str = "", line: int | None = None) -> None:
        self.file = file
        self.field = field
        self.line = line
        self.reason = reason
        where = file if line is None else f"{file}:{line}"
        super().__init__(f"{where}: {field}: {reason}" if field else f"{where}: {reason}")


class MeasurementError(QianchengError, OSError):
    """A measurement that could not be made; carries the reason code reported in the result."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
