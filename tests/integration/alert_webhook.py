"""A webhook receiver for Alertmanager that records every notification it gets, with its path and arrival time."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Notification", "WebhookReceiver"]


@dataclass(frozen=True)
class Notification:
    """One POST from Alertmanager: the path it came to (its receiver), when (monotonic s), and its body."""

    path: str
    received: float
    body: dict[str, Any]

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return list(self.body.get("alerts", []))


class WebhookReceiver:
    """Listens on 127.0.0.1 (a free port) in a thread; `url(path)` for Alertmanager's webhook_configs."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with receiver._lock:
                    receiver.notifications.append(Notification(self.path, time.monotonic(), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the signature http.server uses
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="alert-webhook", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self, since: float = 0.0) -> list[tuple[Notification, dict[str, Any]]]:
        """Every (notification, alert) that arrived at or after `since` (monotonic s)."""
        with self._lock:
            return [(n, alert) for n in self.notifications if n.received >= since for alert in n.alerts]

    def find(self, alertname: str, status: str = "firing", since: float = 0.0, **labels: str) -> list[tuple[Notification, dict[str, Any]]]:
        """Alerts of that name and status whose labels include `labels`."""
        return [
            (n, a) for n, a in self.received(since)
            if a["labels"].get("alertname") == alertname and a["status"] == status
            and all(a["labels"].get(k) == v for k, v in labels.items())
        ]  # fmt: skip

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
