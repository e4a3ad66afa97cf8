"""Fixtures of the test network: a lab torn down after each test, a client/server pair on a plain link,
and helpers that run the probe and fping inside a namespace."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON
from tests.integration.helpers import require_root, require_tool
from tests.netlab.lab import Lab, Link, Netns

PREFIX = "qna"


@dataclass(frozen=True)
class Pair:
    """Two namespaces joined by one link: the probe side (`client`, end a) and the target (`server`, end b)."""

    client: Netns
    server: Netns
    link: Link


def require_lab_tools() -> None:
    """Root and the tools the lab drives; skip with a reason, or fail under CI=true."""
    require_root()
    for tool in ("ip", "nft", "tc"):
        require_tool(tool)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    require_lab_tools()
    with Lab(PREFIX, workdir=tmp_path / "lab") as built:
        yield built


@pytest.fixture
def pair(lab: Lab) -> Pair:
    client, server = lab.namespace("client"), lab.namespace("server")
    return Pair(client, server, lab.link(client, server))


def probe_once(ns: Netns, kind: str, target: str, *options: str, timeout: float = 120) -> dict[str, Any]:
    """`qiancheng-probe once --json --kind KIND OPTIONS TARGET` run inside `ns`; its one result."""
    done = ns.run(PYTHON, "-m", "qiancheng.probes.cli", "once", "--json", "--kind", kind, *options, target,
                  check=False, timeout=timeout)
    assert done.returncode in (0, 1), f"probe exit {done.returncode}: {done.stderr}"
    [result] = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert isinstance(result, dict)
    return result


def fping_samples(ns: Netns, address: str, count: int, interval_ms: float, timeout_ms: float = 1000,
                  size: int = 56, wrap: tuple[str, ...] = ()) -> list[float | None]:
    """fping's per-packet RTTs in seconds (None for a lost packet), run inside `ns` (`fping -C`).

    `wrap` prefixes the command (e.g. taskset, to pin fping beside a CPU hog).
    """
    fping = require_tool("fping")
    done = ns.run(*wrap, fping, "-C", str(count), "-p", f"{interval_ms:g}", "-t", f"{timeout_ms:g}",
                  "-b", str(size), "-q", address, check=False, timeout=count * interval_ms / 1e3 + timeout_ms / 1e3 + 30)
    # `-C` prints "addr : 0.05 0.04 - ..." on stderr, in milliseconds, "-" for a lost packet
    line = next((l for l in done.stderr.splitlines() if " : " in l), None)
    assert line is not None, f"fping printed no per-packet line: {done.stderr}"
    return [None if v == "-" else float(v) / 1e3 for v in line.split(" : ", 1)[1].split()]


def received(samples: list[float | None]) -> list[float]:
    return [s for s in samples if s is not None]


def median_of(samples: list[float | None]) -> float:
    values = received(samples)
    assert values, "no packet came back"
    return statistics.median(values)
