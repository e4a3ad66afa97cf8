"""InfluxDB line protocol for stored batches: one point per result at its true start time, one per batch.

Pure functions, no I/O. The output is what influxdb-client's `Point.to_line_protocol()` gives for the
same point (tags and fields sorted, same escaping, whole floats without `.0`); a unit test holds that.
Encoding here rather than through `Point` is about five times faster on the ingest path.

Schema (docs/metrics.md, "InfluxDB schema"):

- `qiancheng_result`, time = the result's `start_ns`; tags `probe, city, isp, target, target_class,
  kind`; fields: every figure (float, base units), `duration_seconds`, `success` (1i/0i), `seq`
  (integer), `error` (string, failures only). A point is identified by measurement, tags and time, so
  writing the same result twice writes the same point, which InfluxDB overwrites rather than doubles.
  A `path` result also carries `fingerprint` and, when its path changed, `previous_fingerprint` (strings).
- `qiancheng_path_hop`, time = the `path` result's `start_ns`; the result's tags plus `flow` and `ttl`;
  fields `address` (string, absent for a hop that never answered), `sent`, `received` (integers),
  `loss_ratio`, `rtt_min_seconds`, `rtt_median_seconds`, `rtt_max_seconds`, `rtt_last_seconds`,
  `rate_limited` (1i/0i), `asn` (integer), `unreachable` and `mpls` (strings, labels joined by `/`),
  when the hop has them.
- `qiancheng_probe`, time = when the collector stored the batch; tags `probe, city, isp`; fields: the
  probe's own `stats` (spool backlog, drops, ...) and `results` (integer, results in the batch).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import Final

from qiancheng.core.result import Result
from qiancheng.core.wire import Batch

__all__ = [
    "RESULT_MEASUREMENT",
    "HOP_MEASUREMENT",
    "PROBE_MEASUREMENT",
    "RESERVED_FIELDS",
    "result_line",
    "probe_line",
    "batch_lines",
]

RESULT_MEASUREMENT: Final = "qiancheng_result"
HOP_MEASUREMENT: Final = "qiancheng_path_hop"
PROBE_MEASUREMENT: Final = "qiancheng_probe"
#: fields every result point has; a figure of the same name is shadowed by them
RESERVED_FIELDS: Final = ("duration_seconds", "success", "seq", "error")

# line protocol: in keys and tag values `,` `=` and space are escaped; a line break cannot appear raw
_ESCAPE_KEY: Final = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_STRING: Final = str.maketrans({'"': r"\"", "\\": r"\\"})


@functools.lru_cache(maxsize=4096)  # figure and tag names repeat in every result: escape each once
def _key(text: str) -> str:
    return text.translate(_ESCAPE_KEY)


def _tag_value(text: str) -> str:
    escaped = text.translate(_ESCAPE_KEY)
    # a trailing backslash would escape the separator after it
    return escaped + " " if escaped.endswith("\\") else escaped


def _float(value: float) -> str:
    text = str(value)
    return text[:-2] if text.endswith(".0") else text


def _tags(tags: Iterable[tuple[str, str]]) -> str:
    # an empty tag value is not allowed in line protocol: such a tag is left out
    return "".join(f",{_key(name)}={_tag_value(value)}" for name, value in sorted(tags) if value)


def _fields(floats: Mapping[str, float], integers: Mapping[str, int], strings: Mapping[str, str]) -> str:
    rendered: dict[str, str] = {}
    for name, number in floats.items():
        if math.isfinite(number):  # line protocol has no NaN or infinity
            rendered[name] = _float(number)
    for name, integer in integers.items():
        rendered[name] = f"{integer}i"
    for name, text in strings.items():
        rendered[name] = '"' + text.translate(_ESCAPE_STRING) + '"'
    return ",".join(f"{_key(name)}={rendered[name]}" for name in sorted(rendered))


def _series(probe: str, city: str, isp: str, result: Result) -> str:
    target = result.target
    tags = _tags((("probe", probe), ("city", city), ("isp", isp), ("target", target.name),
                  ("target_class", target.target_class), ("kind", result.kind)))  # fmt: skip
    return RESULT_MEASUREMENT + tags


#: info of a `path` result kept as string fields of its point
_PATH_STRINGS: Final = ("fingerprint", "previous_fingerprint")


def _result_point(series: str, result: Result) -> str:
    floats = {name: value for name, value in result.figures.items() if name not in RESERVED_FIELDS}
    floats["duration_seconds"] = result.duration_seconds
    strings = {"error": result.error} if result.error else {}
    if result.kind == "path":
        strings.update((key, result.info[key]) for key in _PATH_STRINGS if key in result.info)
    fields = _fields(floats, {"success": int(result.success), "seq": result.seq}, strings)
    return f"{series} {fields} {result.start_ns}"


def _hop_points(probe: str, city: str, isp: str, result: Result) -> list[str]:
    """The `qiancheng_path_hop` points of a path result: one per flow and TTL, at the result's start."""
    target = result.target
    base = (("probe", probe), ("city", city), ("isp", isp), ("target", target.name),
            ("target_class", target.target_class), ("kind", result.kind))  # fmt: skip
    lines = []
    for hop in result.hops:
        tags = _tags((*base, ("flow", str(hop.flow)), ("ttl", str(hop.ttl))))
        floats = {"loss_ratio": hop.loss_ratio}
        for name in ("rtt_min_seconds", "rtt_median_seconds", "rtt_max_seconds", "rtt_last_seconds"):
            value = getattr(hop, name)
            if value is not None:
                floats[name] = value
        integers = {"sent": hop.sent, "received": hop.received, "rate_limited": int(hop.rate_limited)}
        if hop.asn is not None:
            integers["asn"] = hop.asn
        strings = {name: value for name, value in (("address", hop.address), ("unreachable", hop.unreachable),
                                                   ("mpls", "/".join(map(str, hop.mpls)))) if value}  # fmt: skip
        lines.append(f"{HOP_MEASUREMENT}{tags} {_fields(floats, integers, strings)} {result.start_ns}")
    return lines


def result_line(probe: str, city: str, isp: str, result: Result) -> str:
    """The `qiancheng_result` point of one result, timestamped with its start time (ns)."""
    return _result_point(_series(probe, city, isp, result), result)


def probe_line(batch: Batch, received_ns: int) -> str:
    """The `qiancheng_probe` point of one batch: the probe's own figures when the collector stored it."""
    tags = _tags((("probe", batch.probe_id), ("city", batch.city), ("isp", batch.isp)))
    stats = {name: value for name, value in batch.stats.items() if name != "results"}
    return f"{PROBE_MEASUREMENT}{tags} {_fields(stats, {'results': len(batch.results)}, {})} {received_ns}"


def batch_lines(batch: Batch, results: Iterable[Result], received_ns: int) -> str:
    """The body of one write: a point per result of `results` (from `batch`), then the probe's point."""
    series: dict[tuple[str, str, str], str] = {}  # a batch holds few series: build each tag set once
    lines = []
    for result in results:
        key = (result.target.name, result.target.target_class, result.kind)
        prefix = series.get(key)
        if prefix is None:
            prefix = series[key] = _series(batch.probe_id, batch.city, batch.isp, result)
        lines.append(_result_point(prefix, result))
        if result.hops:
            lines.extend(_hop_points(batch.probe_id, batch.city, batch.isp, result))
    lines.append(probe_line(batch, received_ns))
    return "\n".join(lines)
