"""`qiancheng-collector --config FILE`: serve the ingest API and /metrics; `hash-token` for operators."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import ssl
import sys
from collections.abc import Sequence
from typing import Final

from aiohttp import web

try:
    # uvloop (libuv) where it is installed: the same asyncio API, with the loop, its transports and its
    # timers in C; a push of 100 results costs the collector about a quarter less CPU (bench/ingest.py)
    from uvloop import run as _run
except ImportError:  # a platform without its wheel: the standard loop
    from asyncio import run as _run  # type: ignore[assignment]
from aiohttp.http_exceptions import HttpProcessingError

from qiancheng.core import logs
from qiancheng.core.configfile import YamlDocument
from qiancheng.core.errors import ConfigError
from qiancheng.core.logs import kv

from . import __version__
from .admin import add_enroll_command, add_probes_commands, run_enroll_command, run_probes_command
from .app import make_app, make_internal_app
from .config import CollectorConfig, TlsConfig, load_collector_config
from .registry import RegistryError, hash_token
from .store import StoreError
from .tls import TlsFileError, reload_certificate, server_context

__all__ = ["main", "serve"]

log = logging.getLogger("qiancheng.collector")

#: on SIGTERM, how long in-flight requests (and their commits) may take; systemd waits 20 s
SHUTDOWN_SECONDS: Final = 15.0
#: tokens shorter than this are probably not random secrets (a fast hash is only safe for those)
_SHORT_TOKEN: Final = 16
#: allocations between collections of the youngest generation (Python's default: 700). A decoded batch
#: of 1000 results is some 30 000 objects that live until it is stored, so at the default each batch
#: set off dozens of collections that walked it, and the batches still in flight again and again
#: (bench/ingest.py, 1000 results a batch: 12 % of the collector's CPU went to collections; 2 % now).
#: What ingest allocates is freed by reference counting, not by the cycle collector, so collecting
#: less often costs no memory beyond the cycles that wait a little longer
_GC_YOUNG_THRESHOLD: Final = 50_000


def _bad_request_in_one_line(record: logging.LogRecord) -> bool:
    """aiohttp logs a request it cannot parse (a NUL in a header, a broken request line) with a traceback
    at ERROR; it answered 400 already, so for operators that is one warning line, like other refusals."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, HttpProcessingError):
        record.msg, record.args = kv("bad_http_request", status=error.code, reason=str(error.message)[:200]), ()
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qiancheng-collector",
        description="Receive probe result batches, store them durably (SQLite or InfluxDB), expose Prometheus metrics.",
        epilog="Add a probe: `qiancheng-collector --config FILE enroll --city C --isp I` prints a one-time code for "
        "`qiancheng-probe enroll` on the box (or put `hash-token TOKEN` under probes[].token_sha256 in the config); "
        "`qiancheng-collector --config FILE probes list` shows the registry.",
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
    add_probes_commands(commands)
    add_enroll_command(commands)
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


async def _listen(
    runner: web.AppRunner, host: str, port: int, field: str, document: YamlDocument, context: ssl.SSLContext | None = None
) -> None:
    try:
        await web.TCPSite(runner, host, port, ssl_context=context).start()
    except OSError as error:
        raise document.error((field,), f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def _reload_certificate(context: ssl.SSLContext, tls: TlsConfig) -> None:
    """SIGHUP: present the renewed certificate to new connections; keep the old one if it cannot load."""
    try:
        reload_certificate(context, tls.cert_file, tls.key_file)
    except TlsFileError as error:
        log.error(kv("tls_reload_failed", field=f"listen.tls.{error.field}", error=error.reason,
                     effect="the previous certificate stays in use"))  # fmt: skip
    else:
        log.info(kv("tls_reloaded", cert_file=tls.cert_file))


def _tune_garbage_collection() -> None:
    """Collect cycles less often, and never walk what startup made (modules, config, the state restored
    from the store): it lives as long as the process, and each full collection would walk it again."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def serve(config: CollectorConfig, document: YamlDocument) -> int:
    """Listen until SIGTERM or SIGINT, then stop accepting, let in-flight commits finish, close the store."""
    app = make_app(config)
    tls = config.listen.tls
    context = server_context(tls.cert_file, tls.key_file, tls.client_ca_file) if tls is not None else None
    # auto_decompress=False: aiohttp would otherwise inflate gzip bodies itself, without our bound
    runner = web.AppRunner(app, auto_decompress=False, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
    internal = web.AppRunner(make_internal_app(app), access_log=None, shutdown_timeout=1.0)
    try:
        try:
            await runner.setup()
        except StoreError as error:
            field = ("store", "influx") if config.store.backend == "influx" else ("store", "path")
            raise document.error(field, f"cannot open the store: {error}") from None
        except RegistryError as error:
            field = ("store", "registry") if config.store.registry else ("store", "path")  # beside the results
            raise document.error(field, f"cannot open the probe registry: {error}") from None
        _tune_garbage_collection()
        host, port = config.listen.host, config.listen.port
        await _listen(runner, host, port, "listen", document, context)
        if config.metrics_listen is not None:
            await internal.setup()
            await _listen(internal, config.metrics_listen.host, config.metrics_listen.port, "metrics_listen", document)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if context is not None and tls is not None:
            loop.add_signal_handler(signal.SIGHUP, _reload_certificate, context, tls)
        log.info(kv("collector_started", version=__version__, listen=f"{host}:{port}", store=config.store.backend,
                    event_loop=type(loop).__module__.partition(".")[0],
                    path=config.store.location, probes=len(config.probes),
                    tls="mutual" if tls is not None and tls.client_ca_file else "on" if tls is not None else "off",
                    metrics=(f"{config.metrics_listen.host}:{config.metrics_listen.port}"
                             if config.metrics_listen is not None else "listen")))  # fmt: skip
        await stop.wait()
        log.info(kv("collector_stopping", grace_seconds=SHUTDOWN_SECONDS))
    finally:
        await internal.cleanup()
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
    if args.command == "probes":
        return run_probes_command(args, config)
    if args.command == "enroll":
        return run_enroll_command(args, config)
    if args.check:
        plan = f", plan {config.plan.file}" if config.plan is not None else ", no plan"
        print(f"{args.config}: ok: listen {config.listen.host}:{config.listen.port}, "
              f"store {config.store.backend} {config.store.location}, {len(config.probes)} probes{plan}")  # fmt: skip
        return 0
    logs.setup(config.log_level)
    logging.getLogger("aiohttp.server").addFilter(_bad_request_in_one_line)
    try:
        return _run(serve(config, document))
    except ConfigError as error:
        print(f"qiancheng-collector: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
