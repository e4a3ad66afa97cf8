"""`qiancheng-probe once`: measure each target now and print the results (a table, or JSON lines).

Kept apart from the command line's parser so that the agent (`run`) never loads what only this command
draws with (rich): a probe on a small box keeps those megabytes.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import re
import sys
from collections.abc import Coroutine, Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from qiancheng.core.configfile import decode_hook
from qiancheng.core.kind_settings import KindSettings, settings_problem
from qiancheng.core.kinds import EXCLUSIVE_KINDS, kind_named
from qiancheng.core.result import BadName, Result, Target
from qiancheng.core.targets import split_host_port

from . import measure
from .measure.progress import PathProgress, path_progress_callback, progress_callback
from .render import ProgressBar, hops_table, results_table

__all__ = ["run_once"]

# `once` flags that map one-to-one onto settings fields of the kinds that have them.
_SETTING_FLAGS = ("count", "packet_interval", "timeout", "size", "port", "family", "resolver",
                 "query_name", "query_type", "protocol", "url", "expected_status", "verify_tls",
                 "streams", "window", "warmup", "max_bytes", "secret_file", "rounds", "round_interval",
                 "max_ttl", "first_ttl", "flows", "asn_file", "reverse_dns", "direction", "algorithm", "fixed_rate",
                 "connections", "sub_interval", "key_file", "key_id")  # fmt: skip


def _once_settings(kind: str, args: argparse.Namespace) -> KindSettings:
    settings_type = kind_named(kind).settings
    given: dict[str, Any] = {name: getattr(args, name) for name in _SETTING_FLAGS if getattr(args, name) is not None}
    if "window" in given and "duration" in settings_type.__struct_fields__:
        given["duration"] = given.pop("window")  # --duration: a capacity test's whole length
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
    """The target `address` names, named after its host (a target name allows only NAME_PATTERN's characters)."""
    host = (urlsplit(address).hostname if "://" in address else split_host_port(address)[0]) or address
    if host.startswith(":"):  # an IPv6 address such as ::1, written out in full to start with a digit
        host = ipaddress.ip_address(host).exploded
    name = re.sub(r"[^A-Za-z0-9_.:\-]", "_", host)[:128]
    return Target(name=name if name[:1].isalnum() else f"t{name[:127]}", address=address, target_class=target_class)


async def _measure_all(targets: Sequence[Target], kinds: Sequence[str], settings: Sequence[KindSettings]) -> list[Result]:
    return list(await asyncio.gather(*(measure.run(k, t, s) for t, k, s in zip(targets, kinds, settings))))


def run_once(args: argparse.Namespace) -> int:
    kinds = [args.kind or ("http" if "://" in t else "icmp") for t in args.targets]
    try:
        settings = [_once_settings(kind, args) for kind in kinds]
    except ValueError as error:
        print(f"qiancheng-probe once: {error}", file=sys.stderr)
        return 2
    try:
        targets = [_once_target(t, args.target_class) for t in args.targets]
    except BadName as error:
        print(f"qiancheng-probe once: --class {args.target_class!r}: {error}", file=sys.stderr)
        return 2
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
