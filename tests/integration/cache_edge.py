"""A stand-in for a CDN edge on loopback: a real HTTP server that answers with a cache's headers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _CacheLikeHandler(BaseHTTPRequestHandler):
    """Answers like a Fastly edge that holds the object: X-Cache HIT, Age, X-Served-By."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        body = b"segment"
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Via", "1.1 varnish")
        self.send_header("X-Served-By", "cache-lishui-edge1-HGH")
        self.send_header("X-Cache", "HIT")
        self.send_header("Age", "42")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        return


@contextmanager
def cache_like_server() -> Iterator[str]:
    """Serve on a free loopback port; yields the URL of an object it holds."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CacheLikeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/seg.ts"
    finally:
        server.shutdown()
        server.server_close()
