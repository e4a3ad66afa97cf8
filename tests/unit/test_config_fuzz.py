"""Property-based fuzzing of the config loaders (collector, probe, responder, plan): whatever the file
holds, a loader returns a config or raises ConfigError naming the file, never another exception.

Documents are drawn two ways: the shipped example configs with values swapped, keys dropped or
invented at random places (close to real mistakes), and arbitrary YAML text (close to garbage).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qiancheng.collector.config import load_collector_config
from qiancheng.collector.plan.load import load_plan
from qiancheng.core.errors import ConfigError
from qiancheng.probes.config import load_probe_config
from qiancheng.probes.responder.config import load_responder_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {"collector": ROOT / "configs" / "collector.yaml", "probe": ROOT / "configs" / "probe.yaml",
            "responder": ROOT / "configs" / "responder.yaml", "plan": ROOT / "configs" / "plan.yaml"}  # fmt: skip
LOADERS: dict[str, Callable[[Path], object]] = {
    "collector": load_collector_config,
    "probe": load_probe_config,
    "responder": load_responder_config,
    "plan": lambda path: load_plan(path, 256),
}
#: stands for the directory the config is written to
HERE = "HERE_DIRECTORY"
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["30s", "-5s", "1e400", "64MiB", "0", "", "::1", "0.0.0.0", "http://x", "https://c:9310",
                     "/nonexistent/file", "icmp", "tcp", "download", "ftp://x", "99999", "1h", "NaN"]),
)  # fmt: skip
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)  # fmt: skip


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in a parsed document."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, prefix + (index,))
    return found


def _mutate(document: Any, path: tuple[Any, ...], action: str, value: Any) -> Any:
    if not path:
        return value
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "drop" and isinstance(parent, dict):
        del parent[last]
    elif action == "invent" and isinstance(parent, dict):
        parent[f"{last}_x"] = value
    else:
        parent[last] = value
    return document


def _load(kind: str, text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"{kind}.yaml"
        path.write_text(text.replace(HERE, directory), encoding="utf-8")
        for named in ("sla.yaml", "plan.yaml"):  # the collector's
            if not (Path(directory) / named).exists():
                (Path(directory) / named).write_text((ROOT / "configs" / named).read_text())
        (Path(directory) / "probe.token").write_text("token-fuzz-0123456789\n")  # the probe's
        try:
            LOADERS[kind](path)
        except ConfigError as error:
            # the config itself, or a file it names (sla.yaml, plan.yaml) that holds the mistake
            assert error.file.startswith(directory) and error.reason, error


@pytest.mark.parametrize("kind", sorted(LOADERS))
@FUZZ
@given(data=st.data())
def test_fuzz_mutated_example_configs_load_or_say_why(kind: str, data: st.DataObject) -> None:
    # the files the examples name, made beside the config, so that mutations reach the deeper checks
    document = yaml.safe_load(EXAMPLES[kind].read_text().replace("/etc/qiancheng/probe.token", f"{HERE}/probe.token"))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(document)
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["replace", "drop", "invent"]))
        document = _mutate(document, path, action, data.draw(values))
    _load(kind, yaml.safe_dump(document, allow_unicode=True))


@pytest.mark.parametrize("kind", sorted(LOADERS))
@FUZZ
@given(text=st.one_of(st.text(max_size=400), st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace"))))
def test_fuzz_arbitrary_text_loads_or_says_why(kind: str, text: str) -> None:
    _load(kind, text)
