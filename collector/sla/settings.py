"""The collector config's `sla:` section: the profiles file, the windows, the pace, the hysteresis and,
with backend influx, the window cache. Checked where the config is loaded, where sla.yaml is parsed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec

from qiancheng.core.configfile import YamlDocument
from qiancheng.core.units import Duration

from .profiles import load_sla_profiles

__all__ = ["SlaConfig", "check_sla_section"]


class SlaConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """SLA judgement (docs/sla.md): the profiles file, the sliding windows, how often, and the hysteresis."""

    #: sla.yaml, relative to this config's directory; empty: no judgement
    profiles: str = ""
    #: backend influx only: the SQLite file of recent results the judgement reads, relative to this
    #: config's directory; empty: sla-cache.db in store.path's directory
    cache: str = ""
    #: sliding windows over the stored results; the first one judges, the others are reported
    windows: tuple[Duration, ...] = (Duration(300.0), Duration(3600.0))
    #: one judgement pass every `interval`
    interval: Duration = Duration(60.0)
    #: a breach opens after this many consecutive bad windows, and closes after `close_after` good ones
    open_after: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    close_after: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    #: a breach is blamed on the first hop whose median RTT rose by more than this share of the
    #: destination's rise, against the target's trace from before (docs/sla.md, "Where a breach lies")
    blame_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    #: how many hops at each end are the probe's side (the first) and the target's side (the last)
    blame_edge_hops: Annotated[int, msgspec.Meta(ge=0, le=16)] = 2


def check_sla_section(sla: SlaConfig, store_backend: str, store_path: str, document: YamlDocument) -> SlaConfig:
    """The section checked, its profiles file loaded now (its errors name sla.yaml's own lines), and its
    paths made absolute, relative to the directory of the config that names them."""
    if not sla.windows:
        raise document.error(("sla", "windows"), "give at least one window, e.g. [5m, 1h]")
    for index, window in enumerate(sla.windows):
        if window < 1.0:
            raise document.error(("sla", "windows", index), "a window must be at least 1s")
    if sla.interval < 0.1:
        raise document.error(("sla", "interval"), "must be at least 100ms")
    if not sla.profiles:  # no judgement, no window cache
        return msgspec.structs.replace(sla, cache="")
    path = Path(document.file).parent / sla.profiles
    load_sla_profiles(path)
    cache = _sla_cache(sla.cache, store_backend, store_path, document)
    return msgspec.structs.replace(sla, profiles=str(path.resolve()), cache=cache)


def _sla_cache(given: str, store_backend: str, store_path: str, document: YamlDocument) -> str:
    """The window cache's absolute path with backend influx (judgement reads it, docs/sla.md); empty with
    sqlite, whose store the judgement reads itself."""
    if store_backend == "sqlite":
        return ""
    cache = (Path(document.file).parent / given if given else Path(store_path).parent / "sla-cache.db").resolve()
    field = ("sla", "cache") if given else ("sla", "profiles")
    if not cache.parent.is_dir():
        raise document.error(field, f"the SLA window cache's directory {str(cache.parent)!r} does not exist"
                             + ("" if given else " (set sla.cache)"))  # fmt: skip
    if cache == Path(store_path).resolve():
        raise document.error(field, "the SLA window cache is pruned to the last windows: give it its own file, not store.path")
    return str(cache)
