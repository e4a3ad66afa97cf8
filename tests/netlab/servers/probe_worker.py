"""A probe that measures on request inside a network namespace, and the client that drives it.

The worker reads one JSON request per line on stdin, `{"kind": ..., "target": ..., "settings": {...}}`
(settings as in probe.yaml, e.g. `"timeout": "2s"`), measures once through `measure.run` as the agent
does, and writes the result as one JSON line on stdout. One process serves a whole series, so a test
can interleave our measurements with a peer tool's without paying for an interpreter start each time.

    ip netns exec NS python -m tests.netlab.servers.probe_worker
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from qiancheng.core.configfile import decode_hook
from qiancheng.core.kinds import kind_named
from qiancheng.core.result import Target
from qiancheng.probes.measure import run
from tests.netlab.lab import Netns

__all__ = ["ProbeWorker", "RAISED_PRIORITY"]

ROOT = Path(__file__).resolve().parents[3]
# Both sides of a comparison (our worker and the peer tool) and the servers they talk to run at this
# priority, so that other work on a shared test machine delays neither tool's wake-ups: with a load of
# 5 on two cores, curl's medians drifted up to 2 ms above the path's round trip while ours held.
RAISED_PRIORITY = ("nice", "-n", "-10")


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One measurement to make."""

    kind: str
    target: str
    settings: dict[str, Any] = {}


class ProbeWorker:
    """A worker process in `ns`; `measure()` sends it one request and returns the result as a dict."""

    def __init__(self, ns: Netns, env: dict[str, str] | None = None) -> None:
        self.process = ns.popen(
            *RAISED_PRIORITY, sys.executable, "-m", "tests.netlab.servers.probe_worker",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, **(env or {})},
        )  # fmt: skip

    def measure(self, kind: str, target: str, **settings: Any) -> dict[str, Any]:
        """One result of `kind` against `target` (figures in seconds, as `once --json` prints)."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps({"kind": kind, "target": target, "settings": settings}).encode() + b"\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"probe worker exited with status {self.process.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # the worker ends at the end of its input
        self.process.wait(timeout=10)


async def _serve() -> None:
    decoder = msgspec.json.Decoder(Request)
    encoder = msgspec.json.Encoder()
    for line in sys.stdin:  # blocking between requests is fine: nothing else runs on this loop then
        if not line.strip():
            continue
        request = decoder.decode(line)
        settings = msgspec.convert(request.settings, kind_named(request.kind).settings, dec_hook=decode_hook)
        result = await run(request.kind, Target(name="target", address=request.target), settings)
        sys.stdout.write(encoder.encode(result).decode() + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(_serve())
