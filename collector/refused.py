"""A request the collector will not accept, as an exception that knows its JSON answer."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from qiancheng.core.errors import QianchengError

from .bodies import ErrorBody, encode

__all__ = ["Refused"]


class Refused(QianchengError, ValueError):
    """A request the collector will not accept: an HTTP status, a reason, and the JSON path at fault;
    `probe`, once the request is known to come from one (for the log line)."""

    def __init__(self, status: int, error: str, field: str | None = None, headers: Mapping[str, str] | None = None,
                 probe: str | None = None) -> None:  # fmt: skip
        self.status = status
        self.error = error
        self.field = field
        self.headers = dict(headers or {})
        self.probe = probe
        super().__init__(f"{status}: {error}" + (f" at {field}" if field else ""))

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=encode(ErrorBody(error=self.error, field=self.field)),
            content_type="application/json",
            headers=self.headers,
        )
