"""`qiancheng-collector --config FILE probes list|revoke ID|rotate ID` and `enroll --city C --isp I`: the probe
registry from the command line.

These commands open the registry file the running collector uses (collector/registry.py), so what they
change takes effect on the probe's next request, without a restart.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timezone

from qiancheng.core.result import NAME_PATTERN
from qiancheng.core.units import Duration, parse_duration
from qiancheng.core.wire import LABEL_VALUE_PATTERN

from .config import CollectorConfig
from .records import RegistryEntry
from .registry import RegistryError, default_probe_id, open_registry

__all__ = ["add_probes_commands", "run_probes_command", "add_enroll_command", "run_enroll_command"]

_DEFAULT_GRACE = "24h"
_DEFAULT_TTL = "24h"
_MAX_TTL_SECONDS = 30 * 86400
_LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)
_NAME = re.compile(NAME_PATTERN)


def add_probes_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `probes` command and its subcommands."""
    probes = commands.add_parser("probes", help="list, revoke or rotate the tokens of the registered probes",
                                 description="Manage the probe registry (needs --config).")
    actions = probes.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every probe: id, city, ISP, source, state, last change")
    listing.add_argument("--json", action="store_true", help="one JSON object per probe")
    revoke = actions.add_parser("revoke", help="refuse a probe from its next request on")
    revoke.add_argument("probe_id", metavar="ID")
    rotate = actions.add_parser("rotate", help="print a new token for an enrolled probe; the old one works for --grace")
    rotate.add_argument("probe_id", metavar="ID")
    rotate.add_argument("--grace", default=_DEFAULT_GRACE, help=f"how long the old token still works (default {_DEFAULT_GRACE})")


def add_enroll_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    enroll = commands.add_parser(
        "enroll", help="print a one-time code that enrolls a new probe box",
        description="Print a one-time enrollment code (needs --config). On the city box, `qiancheng-probe enroll "
                    "--collector URL --code CODE` exchanges it for the probe's id and token. The code works once, "
                    "until --ttl; only its hash is kept.",
    )  # fmt: skip
    enroll.add_argument("--city", required=True, help="the probe's city (label `city`), e.g. lishui")
    enroll.add_argument("--isp", required=True, help="the probe's ISP (label `isp`), e.g. chinatelecom")
    enroll.add_argument("--id", dest="probe_id", metavar="ID", help="the probe's id (default: CITY-ISP-xxxx)")
    enroll.add_argument("--ttl", default=_DEFAULT_TTL, help=f"how long the code works (default {_DEFAULT_TTL}, at most 30d)")


def run_enroll_command(args: argparse.Namespace, config: CollectorConfig) -> int:
    """Make an enrollment code; returns the exit status (2: it cannot be made, with the reason)."""
    problem = _enroll_problem(args)
    if problem:
        print(f"qiancheng-collector: enroll: {problem}", file=sys.stderr)
        return 2
    probe_id = args.probe_id or default_probe_id(args.city, args.isp)
    if probe_id is None:
        print("qiancheng-collector: enroll: --city and --isp give no ASCII id: give one with --id", file=sys.stderr)
        return 2
    ttl = parse_duration(args.ttl)
    try:
        registry = open_registry(config, quiet=True)
    except RegistryError as error:
        print(f"qiancheng-collector: store.registry: {error}", file=sys.stderr)
        return 2
    try:
        code = registry.add_code(probe_id, args.city, args.isp, round(float(ttl) * 1e9))
    except RegistryError as error:
        print(f"qiancheng-collector: enroll: {error}", file=sys.stderr)
        return 2
    finally:
        registry.close()
    scheme = "https" if config.listen.tls is not None else "http"
    print(code)
    print(f"probe {probe_id} ({args.city}, {args.isp}) may enroll once with the code above, for {args.ttl}. On the box:\n"
          f"  qiancheng-probe enroll --collector {scheme}://COLLECTOR:{config.listen.port} --code {code}", file=sys.stderr)
    return 0


def _enroll_problem(args: argparse.Namespace) -> str | None:
    for name, value in (("--city", args.city), ("--isp", args.isp)):
        if not value or len(value) > 128 or not _LABEL_VALUE.match(value):
            return f"{name}: give a name of 1 to 128 printable characters"
    if args.probe_id is not None and not _NAME.match(args.probe_id):
        return "--id: letters, digits and _ . : - (up to 128), starting with a letter or digit"
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as error:
        return f"--ttl: {error}"
    if not 0 < float(ttl) <= _MAX_TTL_SECONDS:
        return "--ttl: more than 0 and at most 30d"
    return None


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _row(entry: RegistryEntry) -> dict[str, str]:
    return {"id": entry.id, "city": entry.city, "isp": entry.isp, "source": entry.source, "state": entry.state,
            "changed": _when(entry.changed_ns)}


def _list(entries: list[RegistryEntry], as_json: bool) -> None:
    rows = [_row(entry) for entry in entries]
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    columns = ("id", "city", "isp", "source", "state", "changed")
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())


def run_probes_command(args: argparse.Namespace, config: CollectorConfig) -> int:
    """Run `probes ACTION`; returns the exit status (2: the command cannot be done, with the reason)."""
    grace: Duration | None = None
    if args.action == "rotate":
        try:
            grace = parse_duration(args.grace)
        except ValueError as error:
            print(f"qiancheng-collector: --grace: {error}", file=sys.stderr)
            return 2
    try:
        registry = open_registry(config, quiet=True)
    except RegistryError as error:
        print(f"qiancheng-collector: store.registry: {error}", file=sys.stderr)
        return 2
    try:
        if args.action == "list":
            _list(registry.entries(), args.json)
        elif args.action == "revoke":
            registry.revoke(args.probe_id)
            print(f"probe {args.probe_id} revoked: refused from its next request on", file=sys.stderr)
        else:
            assert grace is not None
            token = registry.rotate(args.probe_id, round(float(grace) * 1e9))
            print(token)
            print(f"new token of probe {args.probe_id} printed above: put it in the probe's token file; "
                  f"the old one works for {args.grace} more", file=sys.stderr)
    except RegistryError as error:
        print(f"qiancheng-collector: probes {args.action}: {error}", file=sys.stderr)
        return 2
    finally:
        registry.close()
    return 0
