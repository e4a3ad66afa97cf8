"""`qiancheng-probe`: run the agent, measure once, check a config, or enroll this box."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from qiancheng.core import __version__
from qiancheng.core.configfile import decode_hook
from qiancheng.core.errors import ConfigError
from qiancheng.core.kind_settings import KindSettings, settings_problem
from qiancheng.core.kinds import EXCLUSIVE_KINDS, KINDS, kind_named
from qiancheng.core.result import Result, Target

from . import measure
from .enroll import add_enroll_command, run_enroll
from .measure.progress import PathProgress, path_progress_callback, progress_callback
from .render import ProgressBar, hops_table, results_table

__all__ = ["main"]

# `once` flags that map one-to-one onto settings fields of the kinds that have them.
_SETTING_FLAGS = ("count", "packet_interval", "timeout", "size", "port", "family", "resolver",
                  "query_name", "query_type", "protocol", "url", "expected_status", "verify_tls",
                  "streams", "window", "warmup", "max_bytes", "secret_file", "rounds", "round_interval",
                  "max_ttl", "first_ttl", "flows", "asn_file", "reverse_dns")  # fmt: skip


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
    once.add_argument("--duration", dest="window", help="download/upload: measured window after the warm-up, e.g. 10s")
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
    return parser


def _once_settings(kind: str, args: argparse.Namespace) -> KindSettings:
    settings_type = kind_named(kind).settings
    given: dict[str, Any] = {name: getattr(args, name) for name in _SETTING_FLAGS if getattr(args, name) is not None}
    accepted = {name: value for name, value in given.items() if name in settings_type.__struct_fields__}
    if ignored := sorted(set(given) - set(accepted)):
        raise ValueError(f"--{ignored[0].replace('_', '-')} does not apply to kind {kind}")
    try:
        settings = msgspec.convert(accepted, settings_type, dec_hook=decode_hook)
    except msgspec.ValidationError as error:
        raise ValueError(str(error).replace("`$.", "--").replace("`", "")) from None
    if problem := settings_problem(settings):
        field, why = problem
        flag = "duration" if field == "window" else field.replace("_", "-")
        raise ValueError(f"--{flag} {why}")
    return settings


def _once_target(address: str, target_class: str) -> Target:
    name = (urlsplit(address).hostname or address) if "://" in address else address
    return Target(name=name, address=address, target_class=target_class)


async def _measure_all(targets: Sequence[Target], kinds: Sequence[str], settings: Sequence[KindSettings]) -> list[Result]:
    return list(await asyncio.gather(*(measure.run(k, t, s) for t, k, s in zip(targets, kinds, settings))))


def _once(args: argparse.Namespace) -> int:
    kinds = [args.kind or ("http" if "://" in t else "icmp") for t in args.targets]
    try:
        settings = [_once_settings(kind, args) for kind in kinds]
    except ValueError as error:
        print(f"qiancheng-probe once: {error}", file=sys.stderr)
        return 2
    targets = [_once_target(t, args.target_class) for t in args.targets]
    work = _measure_all(targets, kinds, settings)
    if not args.json and "path" in kinds:
        results = _run_with_path_table(work)
    else:
        results = _run_with_progress(work, show=not args.json and bool(EXCLUSIVE_KINDS & set(kinds)))
    if args.json:
        encoder = msgspec.json.Encoder()
        for result in results:
            sys.stdout.write(encoder.encode(result).decode() + "\n")
    else:
        console = Console()
        console.print(results_table(results))
        for result in results:
            if result.hops:
                console.print(hops_table(result.hops, title=f"path to {result.target.name}"))
    return 0 if all(r.success for r in results) else 1


def _run_with_progress(work: Coroutine[Any, Any, list[Result]], show: bool) -> list[Result]:
    """Run `work`; with `show` and a terminal on stderr, a live bar with the current rate of long tests."""
    console = Console(stderr=True)
    if not show or not console.is_terminal:
        return asyncio.run(work)
    with ProgressBar(console) as bar:
        token = progress_callback.set(bar.update)
        try:
            return asyncio.run(work)
        finally:
            progress_callback.reset(token)


def _run_with_path_table(work: Coroutine[Any, Any, list[Result]]) -> list[Result]:
    """Run `work`; on a terminal (stderr), the hop table of each traced path, redrawn after every round."""
    console = Console(stderr=True)
    if not console.is_terminal:
        return asyncio.run(work)
    tables: dict[str, Table] = {}
    with Live(Group(), console=console, transient=True) as live:
        def show(progress: PathProgress) -> None:
            title = f"path to {progress.target.name}: round {progress.rounds_done} of {progress.rounds}"
            tables[progress.target.address] = hops_table(progress.hops, title=title)
            live.update(Group(*tables.values()))

        token = path_progress_callback.set(show)
        try:
            return asyncio.run(work)
        finally:
            path_progress_callback.reset(token)


def _load(file: str) -> Any:
    from .config import load_probe_config

    return load_probe_config(file)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "once":
        return _once(args)
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
