"""`qiancheng-probe enroll --collector URL --code CODE`: make this box a probe of the fleet.

The one-time code from `qiancheng-collector enroll` is traded (over TLS, the collector's certificate
verified) for the probe's id, city, ISP and a fresh token. The token goes to the token file (mode
0600), and a minimal probe.yaml is written: identity, collector, and `plan: {}`, so that the probe takes
every target from the collector's plan. Everything that could stop those writes is checked before the
code is spent, since a code works once.

Exit status: 0 enrolled; 2 refused (a wrong, used or expired code, bad arguments, files that cannot be
written), with the reason; 1 the collector could not be reached (the code is not spent: try again).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import msgspec

from qiancheng.core import __version__
from qiancheng.core.enrollment import ENROLL_PATH, Enrolled, EnrollRequest
from qiancheng.core.errors import ConfigError
from qiancheng.core.wire import USER_AGENT_PREFIX

from .collector_client import CollectorClient
from .config import load_probe_config
from .transport import TlsSettingsError, client_context

__all__ = ["add_enroll_command", "run_enroll"]

_DEFAULT_CONFIG: Final = "/etc/qiancheng/probe.yaml"
_DEFAULT_TOKEN: Final = "/etc/qiancheng/probe.token"
_DEFAULT_SPOOL: Final = "/var/lib/qiancheng/spool.db"
_TIMEOUT_SECONDS: Final = 30.0
_MAX_ANSWER: Final = 64 * 1024


class _Refused(Exception):
    """Enrollment cannot go on: exit 2 with this reason."""


class _Unreachable(Exception):
    """The collector did not answer: exit 1 with this reason."""


def add_enroll_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    enroll = commands.add_parser(
        "enroll", help="trade a one-time code for this box's probe id and token, and write its config",
        description="Trade the code printed by `qiancheng-collector enroll` for this probe's id and token; write the "
                    "token file (mode 0600) and a probe config that takes its targets from the collector's plan. "
                    "Exit status: 0 enrolled, 2 refused (with the reason), 1 the collector could not be reached.",
    )  # fmt: skip
    enroll.add_argument("--collector", required=True, metavar="URL", help="the collector, e.g. https://collector.example.net:9310")
    enroll.add_argument("--code", required=True, help="the one-time enrollment code")
    enroll.add_argument("--ca-file", help="trust only this CA (PEM) for the collector's certificate")
    enroll.add_argument("--cert-file", help="client certificate (PEM) naming this probe, for a collector with mutual TLS")
    enroll.add_argument("--key-file", help="its private key (PEM)")
    enroll.add_argument("--config", default=_DEFAULT_CONFIG, help=f"the probe config to write (default {_DEFAULT_CONFIG})")
    enroll.add_argument("--token-file", default=_DEFAULT_TOKEN, help=f"where the token goes (default {_DEFAULT_TOKEN})")
    enroll.add_argument("--spool", default=_DEFAULT_SPOOL, help=f"the spool the config names (default {_DEFAULT_SPOOL})")
    enroll.add_argument("--force", action="store_true", help="replace an existing config and token file")


def run_enroll(args: argparse.Namespace) -> int:
    try:
        context = _check(args)
        enrolled = asyncio.run(_exchange(args.collector, args.code, context))
        _write(args, enrolled)
    except _Refused as refused:
        print(f"qiancheng-probe: enroll: {refused}", file=sys.stderr)
        return 2
    except _Unreachable as unreachable:
        print(f"qiancheng-probe: enroll: {unreachable} (the code is not spent: try again)", file=sys.stderr)
        return 1
    print(f"enrolled as probe {enrolled.probe_id} ({enrolled.city}, {enrolled.isp}); token in {args.token_file}, "
          f"config in {args.config}. Start it: qiancheng-probe run --config {args.config}")  # fmt: skip
    return 0


def _check(args: argparse.Namespace) -> ssl.SSLContext | None:
    """Everything that could stop the writes, before the code is spent; the TLS context (None for http)."""
    parts = urlsplit(args.collector)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Refused(f"--collector: expected an http(s) URL such as https://collector:9310, got {args.collector!r}")
    tls_given = [flag for flag, value in (("--ca-file", args.ca_file), ("--cert-file", args.cert_file),
                                          ("--key-file", args.key_file)) if value]  # fmt: skip
    if parts.scheme == "http" and tls_given:
        raise _Refused(f"{tls_given[0]} applies to an https:// collector only")
    if (args.cert_file is None) != (args.key_file is None):
        raise _Refused("give --cert-file and --key-file together")
    for flag, path in (("--config", args.config), ("--token-file", args.token_file)):
        target = Path(path)
        if target.exists() and not args.force:
            raise _Refused(f"{flag}: {path} exists: this box looks enrolled already (--force replaces it)")
        if not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
            raise _Refused(f"{flag}: cannot write in {str(target.parent)!r} (does it exist? run as the probe's user or root)")
    if parts.scheme == "http":
        return None
    try:
        return client_context(args.ca_file, args.cert_file, args.key_file)
    except TlsSettingsError as error:
        raise _Refused(f"--{error.field.replace('_', '-')}: {error.reason}") from None


async def _exchange(collector: str, code: str, context: ssl.SSLContext | None) -> Enrolled:
    url = collector.rstrip("/") + ENROLL_PATH
    client = CollectorClient(context, USER_AGENT_PREFIX + __version__)
    try:
        answer = await client.request("POST", url, headers={"Content-Type": "application/json"},
                                      body=msgspec.json.encode(EnrollRequest(code=code.strip())),
                                      timeout=_TIMEOUT_SECONDS, max_body=_MAX_ANSWER)  # fmt: skip
    except ssl.SSLCertVerificationError as error:
        raise _Refused(f"the collector's certificate is not trusted: {error.verify_message}") from None
    except (TimeoutError, OSError) as error:
        raise _Unreachable(f"cannot reach {url}: {type(error).__name__}: {error}") from None
    finally:
        await client.close()
    body, status = answer.body, answer.status
    if status != 200:
        raise _Refused(f"the collector refused ({status}): {_reason(body)}")
    try:
        return msgspec.json.decode(body, type=Enrolled)
    except msgspec.DecodeError as error:
        raise _Refused(f"the collector's answer is not an enrollment: {error}") from None


def _reason(body: bytes) -> str:
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body[:200].decode("utf-8", errors="replace")
    error = decoded.get("error") if isinstance(decoded, dict) else None
    return error if isinstance(error, str) else body[:200].decode("utf-8", errors="replace")


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` with `mode`, atomically (a crash leaves the old file or the new one)."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(descriptor, mode)  # also when the file was there before
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)


def _yaml_text(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return msgspec.json.encode(value).decode()


def _write(args: argparse.Namespace, enrolled: Enrolled) -> None:
    try:
        _replace(Path(args.token_file), (enrolled.token + "\n").encode(), 0o600)
    except OSError as error:
        # the code is spent: the token is shown once, here, so that the box can still be set up by hand
        print(enrolled.token, file=sys.stdout)
        raise _Refused(f"--token-file: cannot write {args.token_file} ({error.strerror}); the token is printed above: "
                       "put it there by hand, mode 0600") from None  # fmt: skip
    collector = [f"  url: {_yaml_text(args.collector)}", f"  token_file: {_yaml_text(str(Path(args.token_file).resolve()))}"]
    for key in ("ca_file", "cert_file", "key_file"):
        if getattr(args, key):
            collector.append(f"  {key}: {_yaml_text(str(Path(getattr(args, key)).resolve()))}")
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    text = "\n".join([
        f"# written by `qiancheng-probe enroll` on {today}: every target comes from the collector's plan.",
        "# Every key of configs/probe.yaml may be added; `targets:` here run beside the plan's.",
        f"probe: {{id: {_yaml_text(enrolled.probe_id)}, city: {_yaml_text(enrolled.city)}, isp: {_yaml_text(enrolled.isp)}}}",
        "collector:", *collector,
        f"spool: {{path: {_yaml_text(args.spool)}}}",
        "plan: {}", "",
    ])  # fmt: skip
    try:
        _replace(Path(args.config), text.encode("utf-8"), 0o644)
    except OSError as error:
        raise _Refused(f"--config: cannot write {args.config} ({error.strerror}); the token is in {args.token_file}") from None
    try:
        load_probe_config(args.config)
    except ConfigError as error:  # a bug here, not the operator's: say it plainly
        raise _Refused(f"the config written does not load: {error}") from None
