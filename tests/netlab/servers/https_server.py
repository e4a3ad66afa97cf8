"""HTTPS for tests: `GET /ping` answers `pong` over TLS with the certificate the test made.

The responder serves plain HTTP only (TLS belongs in front of it, as in a deployment), so the HTTPS
accuracy tests start this beside it in the server's namespace.

    ip netns exec NS python -m tests.netlab.servers.https_server --cert C --key K --port P HOST [HOST...]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

from aiohttp import web


async def _ping(request: web.Request) -> web.Response:
    return web.Response(text="pong")


async def _serve(hosts: list[str], port: int, context: ssl.SSLContext) -> None:
    app = web.Application()
    app.router.add_get("/ping", _ping)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for host in hosts:
        await web.TCPSite(runner, host, port, ssl_context=context).start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert", required=True, help="PEM certificate chain")
    parser.add_argument("--key", required=True, help="PEM private key")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("hosts", nargs="+", help="addresses to listen on")
    args = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    asyncio.run(_serve(args.hosts, args.port, context))


if __name__ == "__main__":
    main()
