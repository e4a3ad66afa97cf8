"""`qiancheng-collector --config FILE probes list|revoke ID|rotate ID`: the probe registry from the command line.

These commands open the registry file the running collector uses (collector/registry.py), so what they
change takes effect on the probe's next request, without a restart.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone

from qiancheng.core.units import Duration, parse_duration

from .config import CollectorConfig
from .records import RegistryEntry
from .registry import RegistryError, open_registry

__all__ = ["add_probes_commands", "run_probes_command"]

_DEFAULT_GRACE = "24h"


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
