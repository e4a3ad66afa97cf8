"""`qiancheng-probe`: run the agent, measure once, check a config, or enroll this box."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from qiancheng.core import __version__
from qiancheng.core.errors import ConfigError
from qiancheng.core.kinds import KINDS

from .enroll import add_enroll_command, run_enroll

__all__ = ["main"]

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qiancheng-probe",
        description="Measure latency, loss, DNS and HTTP to cloud pools, edge nodes and CDNs; push results to a collector.",
    )
    parser.add_argument("--version", action="version", version=f"qiancheng {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the agent: scheduled tests, durable spool, uploads")
    run.add_argument("--config", required=True, help="probe config (YAML), e.g. configs/probe.yaml")

    check = commands.add_parser("check", help="validate a probe config and list its jobs, then exit")
    check.add_argument("--config", required=True, help="probe config (YAML)")

    add_enroll_command(commands)

    once = commands.add_parser(
        "once",
        help="measure now and print the results",
        description="Measure each TARGET once. TARGET is an IP address, host name, host:port or http(s) URL; "
        "for --kind dns it is the resolver. Exit status: 0 if every test succeeded, 1 if any failed, 2 on bad usage.",
    )
    once.add_argument("targets", nargs="+", metavar="TARGET")
    once.add_argument("--kind", choices=KINDS, help="what to measure (default: http for URLs, icmp otherwise)")
    once.add_argument("--json", action="store_true", help="one JSON object per target, in base units")
    once.add_argument("--class", dest="target_class", default="edge", help="target class label (edge, cloud_pool, cdn, ...)")
    once.add_argument("--count", type=int, help="packets or connects in the train")
    once.add_argument("--packet-interval", help="spacing of the train, e.g. 100ms")
    once.add_argument("--timeout", help="how long to wait for an answer, e.g. 1s")
    once.add_argument("--size", type=int, help="ICMP payload bytes; STAMP packet bytes (44 or more)")
    once.add_argument("--port", type=int, help="TCP, DNS or STAMP port")
    once.add_argument("--family", choices=("auto", "ipv4", "ipv6"))
    once.add_argument("--resolver", help="DNS: resolver to ask (then TARGET is the name to look up)")
    once.add_argument("--query-name", help="DNS: name to look up")
    once.add_argument("--query-type", help="DNS: record type (A, AAAA, TXT, ...)")
    once.add_argument("--protocol", choices=("udp", "tcp", "icmp"), help="DNS transport (udp, tcp); path probes (icmp, udp, tcp)")
    once.add_argument("--url", help="HTTP: URL to fetch (default: TARGET)")
    once.add_argument("--expected-status", type=int, action="append", help="HTTP: accepted status (repeatable)")
    once.add_argument("--insecure", dest="verify_tls", action="store_false", default=None, help="HTTP: do not verify TLS certificates")
    once.add_argument("--streams", type=int, help="download/upload: parallel TCP streams (1-16)")
    once.add_argument("--duration", dest="window",
                      help="download/upload: measured window after the warm-up; capacity: the test, e.g. 10s")
    once.add_argument("--warmup", help="download/upload: longest warm-up before the window, e.g. 3s")
    once.add_argument("--secret-file", metavar="FILE",
                      help="download/upload/stamp: the responder's shared secret (STAMP then runs authenticated)")
    once.add_argument("--max-bytes", help="download/upload: byte cap of the test, e.g. 1GiB")
    once.add_argument("--rounds", type=int, help="path: rounds of probes (default 10)")
    once.add_argument("--round-interval", help="path: time between rounds, e.g. 1s")
    once.add_argument("--max-ttl", type=int, help="path: farthest hop probed (default 30)")
    once.add_argument("--first-ttl", type=int, help="path: nearest hop probed (default 1)")
    once.add_argument("--flows", type=int, help="path: flows traced, to show equal-cost alternatives (1-8)")
    once.add_argument("--asn-file", metavar="FILE", help="path: prefix-to-AS table (lines `PREFIX ASN`)")
    once.add_argument("--reverse-dns", action="store_true", default=None, help="path: look up each hop's name")
    once.add_argument("--direction", choices=("download", "upload"), help="capacity: which way the load goes")
    once.add_argument("--algorithm", choices=("B", "C"), help="capacity: the server's rate search (default B)")
    once.add_argument("--fixed-rate", type=int, metavar="MBITS", help="capacity: one rate, Mbit/s, instead of a search")
    once.add_argument("--connections", type=int, help="capacity: UDP connections of the test (1-24)")
    once.add_argument("--sub-interval", help="capacity: the rate's averaging interval, e.g. 1s")
    once.add_argument("--key-file", metavar="FILE", help="capacity: RFC 9946 keys (`<id>,<key>` lines); signs the test")
    once.add_argument("--key-id", type=int, help="capacity: the key of --key-file to sign with (default 0)")
    return parser


def _load(file: str) -> Any:
    from .config import load_probe_config

    return load_probe_config(file)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "once":
        from .once import run_once  # here, not above: the agent has no use for what `once` draws with

        return run_once(args)
    if args.command == "enroll":
        return run_enroll(args)
    try:
        config = _load(args.config)
    except ConfigError as error:
        print(f"qiancheng-probe: {error}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"{config.file}: ok: probe {config.probe.id} ({config.probe.city}, {config.probe.isp}), "
              f"{len({j.target.name for j in config.jobs})} targets, {len(config.jobs)} jobs")
        for job in config.jobs:
            print(f"  {job.target.name:<24} {job.kind:<8} every {job.settings.interval:g}s")
        if config.plan is not None:
            print(f"  and the collector's plan ({config.collector.url}), asked every {config.plan.poll_interval:g}s, "
                  f"the last good one kept in {config.plan.saved_path(config.spool)}")  # fmt: skip
        if config.collector.insecure_skip_verify:
            print(f"{config.file}: warning: collector.insecure_skip_verify is on: the collector's certificate "
                  "is not checked", file=sys.stderr)  # fmt: skip
        return 0
    from .agent import run_agent

    return asyncio.run(run_agent(config))


if __name__ == "__main__":
    sys.exit(main())
