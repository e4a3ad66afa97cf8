"""`qiancheng-responder`: HTTP, TCP echo, DNS and a STAMP reflector for probes to measure against, in one event loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
from aiohttp import web

from qiancheng.core import __version__
from qiancheng.core.errors import ConfigError
from qiancheng.core.logs import kv, setup
from qiancheng.core.responder_secret import SecretFile
from qiancheng.core.udpst.auth import KeyFileError, load_key_table

from .config import ResponderConfig, check_config, load_responder_config
from .dnsserver import DnsTcpService, DnsUdpProtocol
from .dnszone import Zone
from .echo import EchoService
from .http import READ_BUFFER_BYTES, make_app
from .sockets import bind, describe
from .stamp import StampReflector
from .udpst import UdpstLimits, UdpstServer

__all__ = ["main", "serve", "apply_overrides"]

log = logging.getLogger("qiancheng.responder")

# After SIGTERM, in-flight HTTP transfers get this long to finish before they are cut: a probe's
# measurement cut short fails honestly, and the process is gone within the 1-2 s operators expect.
SHUTDOWN_GRACE_SECONDS = 1.0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535 (0 turns the service off), got {port}")
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qiancheng-responder",
        description="Target-side server for qiancheng probes: HTTP download/upload/ping, TCP echo, a DNS "
        "test zone, a STAMP reflector. Without --config it runs on loopback with the default ports (HTTP 9311, "
        "echo 9312, DNS 9353, STAMP 8620). Options given here override the config file.",
    )
    parser.add_argument("--config", metavar="FILE", help="responder config (YAML), e.g. configs/responder.yaml")
    parser.add_argument(
        "--listen", metavar="HOST", action="append",
        help="IP address to listen on (repeat for several; 0.0.0.0 and :: for every address)",
    )
    parser.add_argument("--http-port", metavar="N", type=_port, help="HTTP port (0: off)")
    parser.add_argument("--echo-port", metavar="N", type=_port, help="TCP echo port (0: off)")
    parser.add_argument("--dns-port", metavar="N", type=_port, help="DNS port, UDP and TCP (0: off)")
    parser.add_argument("--stamp-port", metavar="N", type=_port, help="STAMP reflector UDP port (0: off; 862 needs root)")
    parser.add_argument("--udpst-port", metavar="N", type=_port, help="RFC 9946 capacity server's UDP control port (0: off)")
    parser.add_argument("--secret-file", metavar="FILE",
                        help="shared secret: transfers want its credential, STAMP runs authenticated (docs/security.md)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level")
    return parser


def apply_overrides(config: ResponderConfig, args: argparse.Namespace) -> ResponderConfig:
    """The config with the command line's options in place of the file's."""
    ports = {
        name: value
        for name, value in (("http", args.http_port), ("echo", args.echo_port), ("dns", args.dns_port),
                            ("stamp", args.stamp_port), ("udpst", args.udpst_port))
        if value is not None
    }
    changes: dict[str, object] = {}
    if ports:
        changes["ports"] = msgspec.structs.replace(config.ports, **ports)
    if args.listen:
        changes["listen"] = tuple(args.listen)
    if args.log_level:
        changes["log_level"] = args.log_level
    if args.secret_file:
        changes["secret_file"] = args.secret_file
    return msgspec.structs.replace(config, **changes) if changes else config


@dataclass
class _Sockets:
    """Every listening socket, bound before any service starts so a busy port stops the start cleanly."""

    http: list[socket.socket] = field(default_factory=list)
    echo: list[socket.socket] = field(default_factory=list)
    dns_udp: list[socket.socket] = field(default_factory=list)
    dns_tcp: list[socket.socket] = field(default_factory=list)
    stamp: list[socket.socket] = field(default_factory=list)
    udpst: list[socket.socket] = field(default_factory=list)

    def all(self) -> list[socket.socket]:
        return self.http + self.echo + self.dns_udp + self.dns_tcp + self.stamp + self.udpst


def _bind_all(config: ResponderConfig) -> _Sockets:
    """Bind every service on every listen address; raises OSError naming the service and address."""
    sockets = _Sockets()
    plan = [
        (sockets.http, "http", config.ports.http, socket.SOCK_STREAM),
        (sockets.echo, "echo", config.ports.echo, socket.SOCK_STREAM),
        (sockets.dns_udp, "dns/udp", config.ports.dns, socket.SOCK_DGRAM),
        (sockets.dns_tcp, "dns/tcp", config.ports.dns, socket.SOCK_STREAM),
        (sockets.stamp, "stamp", config.ports.stamp, socket.SOCK_DGRAM),
        (sockets.udpst, "udpst", config.ports.udpst, socket.SOCK_DGRAM),
    ]
    try:
        for into, service, port, kind in plan:
            for host in config.listen_hosts if port else ():
                try:
                    into.append(bind(host, port, kind))
                except OSError as error:
                    raise OSError(error.errno, f"{service} on {describe(host, port)}: {error.strerror}") from None
    except OSError:
        for sock in sockets.all():
            sock.close()
        raise
    return sockets


async def serve(config: ResponderConfig, stop: asyncio.Event | None = None) -> int:
    """Run every configured service until `stop` is set (or SIGTERM/SIGINT); returns the exit code."""
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        sockets = _bind_all(config)
    except OSError as error:
        log.error(kv("responder_bind_failed", reason=error.strerror))
        return 1
    limits, zone = config.limits, Zone.from_config(config.dns)
    try:
        secret = SecretFile(config.secret_file) if config.secret_file is not None else None
    except ValueError as error:  # checked with the config, but the file may have changed since
        log.error(kv("responder_secret_unusable", reason=str(error)))
        for sock in sockets.all():
            sock.close()
        return 1
    try:
        udpst_keys = load_key_table(config.udpst_key_file) if config.udpst_key_file is not None else None
    except KeyFileError as error:
        log.error(kv("responder_udpst_keys_unusable", reason=str(error)))
        for sock in sockets.all():
            sock.close()
        return 1

    runner: web.AppRunner | None = None
    if sockets.http:
        runner = web.AppRunner(
            make_app(limits, secret=secret), access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
            read_bufsize=READ_BUFFER_BYTES,
        )
        await runner.setup()
        for sock in sockets.http:
            await web.SockSite(runner, sock).start()

    echo = EchoService(limits.max_echo_connections, float(limits.echo_idle_timeout))
    echo_servers = [await loop.create_server(echo.protocol, sock=sock) for sock in sockets.echo]

    udp_transports: list[asyncio.BaseTransport] = []
    for sock in sockets.dns_udp:
        udp_transport, _ = await loop.create_datagram_endpoint(lambda: DnsUdpProtocol(zone), sock=sock)
        udp_transports.append(udp_transport)
    dns_tcp = DnsTcpService(zone, config.dns.max_tcp_connections, float(config.dns.tcp_idle_timeout))
    for sock in sockets.dns_tcp:
        await dns_tcp.listen(sock)
    reflectors = [StampReflector(sock, secret) for sock in sockets.stamp]
    for reflector in reflectors:
        reflector.start()
    udpst_limits = UdpstLimits(max_bandwidth_mbps=limits.udpst_max_bandwidth, tests_per_client=limits.udpst_tests_per_client,
                               max_tests=limits.udpst_max_tests)  # fmt: skip
    capacity_servers = [UdpstServer(sock, udpst_limits, udpst_keys) for sock in sockets.udpst]
    for capacity_server in capacity_servers:
        capacity_server.start()

    def where(group: list[socket.socket]) -> str:
        return ",".join(describe(*s.getsockname()[:2]) for s in group) or "off"

    log.info(kv(
        "responder_started", version=__version__, http=where(sockets.http), echo=where(sockets.echo),
        dns=where(sockets.dns_udp), stamp=where(sockets.stamp), udpst=where(sockets.udpst),
        udpst_keys="on" if udpst_keys is not None else "off", secret="on" if secret is not None else "off",
        dns_zone=config.dns.zone, max_download_bytes=int(limits.max_download_bytes),
        max_upload_bytes=int(limits.max_upload_bytes), max_concurrent_transfers=limits.max_concurrent_transfers,
        max_echo_connections=limits.max_echo_connections,
    ))
    await stop.wait()
    log.info(kv("responder_stopping", transfers_grace_seconds=SHUTDOWN_GRACE_SECONDS))

    for server in echo_servers:
        server.close()
    echo.close_all()
    dns_tcp.close()
    for transport in udp_transports:
        transport.close()
    for reflector in reflectors:
        reflector.close()
    for capacity_server in capacity_servers:
        capacity_server.close()
    if runner is not None:
        await runner.cleanup()  # stops accepting, then gives transfers the grace period
    log.info(kv(
        "responder_stopped", echo_refused=echo.refused, stamp_reflected=sum(r.reflected for r in reflectors),
        stamp_dropped_short=sum(r.dropped_short for r in reflectors),
        stamp_dropped_corrupt=sum(r.dropped_corrupt for r in reflectors),
        stamp_dropped_unauthenticated=sum(r.dropped_unauthenticated for r in reflectors),
        udpst_tests=sum(server.completed for server in capacity_servers),
        udpst_refused=sum(sum(n for answer, n in server.answers.items() if answer != 1) for server in capacity_servers),
    ))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `qiancheng-responder`; returns the exit code (2: bad config or arguments)."""
    args = _parser().parse_args(argv)
    try:
        loaded = load_responder_config(args.config) if args.config else ResponderConfig()
        config = apply_overrides(loaded, args)
        if config is not loaded:
            check_config(config, file="command line")
    except ConfigError as error:
        print(f"qiancheng-responder: {error}", file=sys.stderr)
        return 2
    setup(config.log_level)
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
