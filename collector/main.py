"""`qiancheng-collector --config FILE`: serve the ingest API and /metrics; `hash-token` for operators."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Final

from aiohttp import web

from qiancheng.core import logs
from qiancheng.core.configfile import YamlDocument
from qiancheng.core.errors import ConfigError
from qiancheng.core.logs import kv

from . import __version__
from .app import make_app
from .auth import hash_token
from .config import CollectorConfig, load_collector_config
from .store import StoreError

__all__ = ["main", "serve"]

log = logging.getLogger("qiancheng.collector")

#: on SIGTERM, how long in-flight requests (and their commits) may take; systemd waits 20 s
SHUTDOWN_SECONDS: Final = 15.0
#: tokens shorter than this are probably not random secrets (a fast hash is only safe for those)
_SHORT_TOKEN: Final = 16


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qiancheng-collector",
        description="Receive probe result batches, store them durably (SQLite or InfluxDB), expose Prometheus metrics.",
        epilog="Add a probe: put `qiancheng-collector hash-token TOKEN` under probes[].token_sha256 in the config.",
    )
    parser.add_argument("--version", action="version", version=f"qiancheng {__version__}")
    parser.add_argument("--config", metavar="FILE", help="collector config (YAML), e.g. configs/collector.yaml")
    parser.add_argument("--check", action="store_true", help="validate the config, then exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    hashing = commands.add_parser(
        "hash-token",
        help="print the SHA-256 of a probe token, for probes[].token_sha256",
        description="Print the hex SHA-256 of TOKEN (read from stdin when omitted, which keeps it out of shell history).",
    )
    hashing.add_argument("token", nargs="?", metavar="TOKEN")
    return parser


def _hash_token(token: str | None) -> int:
    token = (token if token is not None else sys.stdin.readline()).strip()
    if not token:
        print("qiancheng-collector: hash-token: empty token", file=sys.stderr)
        return 2
    if len(token) < _SHORT_TOKEN:
        print(
            "qiancheng-collector: warning: short token; use a random one, e.g. "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'",
            file=sys.stderr,
        )
    print(hash_token(token))
    return 0


async def serve(config: CollectorConfig, document: YamlDocument) -> int:
    """Listen until SIGTERM or SIGINT, then stop accepting, let in-flight commits finish, close the store."""
    app = make_app(config)
    # auto_decompress=False: aiohttp would otherwise inflate gzip bodies itself, without our bound
    runner = web.AppRunner(app, auto_decompress=False, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
    try:
        try:
            await runner.setup()
        except StoreError as error:
            field = ("store", "influx") if config.store.backend == "influx" else ("store", "path")
            raise document.error(field, f"cannot open the store: {error}") from None
        host, port = config.listen.host, config.listen.port
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as error:
            raise document.error(("listen",), f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info(kv("collector_started", version=__version__, listen=f"{host}:{port}", store=config.store.backend,
                    path=config.store.location, probes=len(config.probes)))  # fmt: skip
        await stop.wait()
        log.info(kv("collector_stopping", grace_seconds=SHUTDOWN_SECONDS))
    finally:
        await runner.cleanup()
    log.info(kv("collector_stopped"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "hash-token":
        return _hash_token(args.token)
    if not args.config:
        parser.error("--config FILE is required")
    try:
        config, document = load_collector_config(args.config)
    except ConfigError as error:
        print(f"qiancheng-collector: {error}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: ok: listen {config.listen.host}:{config.listen.port}, "
              f"store {config.store.backend} {config.store.location}, {len(config.probes)} probes")  # fmt: skip
        return 0
    logs.setup(config.log_level)
    if not config.probes:
        log.warning(kv("no_probes", config=args.config, effect="every push will be refused with 401"))
    try:
        return asyncio.run(serve(config, document))
    except ConfigError as error:
        print(f"qiancheng-collector: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
