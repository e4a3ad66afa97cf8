"""Line protocol of stored batches: the same text influxdb-client's Point writes, the schema's tags and
fields, true timestamps, and the escaping that keeps odd city names intact."""

from __future__ import annotations

import math

import pytest
from influxdb_client.client.write.point import Point

from qiancheng.collector.store.lineprotocol import batch_lines, probe_line, result_line
from qiancheng.core.result import Result, Target
from qiancheng.core.wire import Batch

T0 = 1_795_000_000_123_456_789


def _result(seq: int = 7, figures: dict[str, float] | None = None, error: str | None = None) -> Result:
    return Result(
        kind="icmp", target=Target(name="edge-1", address="198.18.0.1", target_class="edge"), start_ns=T0,
        duration_seconds=0.25, success=error is None, error=error, seq=seq,
        figures={"rtt_median_seconds": 0.0042, "packets_sent": 5.0} if figures is None else figures,
    )  # fmt: skip


def _point(probe: str, city: str, isp: str, result: Result) -> str:
    point = Point("qiancheng_result").time(result.start_ns)  # type: ignore[no-untyped-call]
    for name, value in (("probe", probe), ("city", city), ("isp", isp), ("target", result.target.name),
                        ("target_class", result.target.target_class), ("kind", result.kind)):  # fmt: skip
        point.tag(name, value)
    for figure, number in result.figures.items():
        point.field(figure, number)
    point.field("duration_seconds", result.duration_seconds).field("success", int(result.success))
    point.field("seq", result.seq)
    if result.error:
        point.field("error", result.error)
    return str(point.to_line_protocol())


@pytest.mark.parametrize(
    ("city", "isp", "figures", "error"),
    [
        ("lishui", "ct", {"rtt_median_seconds": 0.0042, "packets_sent": 5.0}, None),
        ("Lishui, Zhejiang", "China Telecom", {"loss_ratio": 1.0, "tiny": 1e-7, "huge": 3e20}, "timeout"),
        ("a=b\\", "tab\there\nnew line", {"x": -0.5}, None),
        ("", "", {}, "refused"),  # empty tags are left out, as Point does
        ("丽水", "电信", {"value": 123456789.125}, None),
    ],
)
def test_result_lines_match_influxdb_client_points(city: str, isp: str, figures: dict[str, float], error: str | None) -> None:
    result = _result(figures=figures, error=error)
    assert result_line("p-1", city, isp, result) == _point("p-1", city, isp, result)


def test_result_line_schema() -> None:
    line = result_line("p-1", "lishui", "ct", _result(seq=42))
    assert line == (
        "qiancheng_result,city=lishui,isp=ct,kind=icmp,probe=p-1,target=edge-1,target_class=edge "
        f"duration_seconds=0.25,packets_sent=5,rtt_median_seconds=0.0042,seq=42i,success=1i {T0}"
    )


def test_failed_result_carries_its_reason_and_reserved_names_win() -> None:
    line = result_line("p-1", "c", "i", _result(figures={"seq": 99.0, "loss_ratio": 1.0}, error="timeout"))
    fields = dict(pair.split("=", 1) for pair in line.split(" ")[1].split(","))
    assert fields == {"duration_seconds": "0.25", "error": '"timeout"', "loss_ratio": "1", "seq": "7i", "success": "0i"}


def test_non_finite_figures_are_left_out() -> None:
    line = result_line("p-1", "c", "i", _result(figures={"a": math.inf, "b": math.nan, "c": 1.5}))
    assert "a=" not in line and "b=" not in line and "c=1.5" in line


def test_probe_line_and_batch_body() -> None:
    batch = Batch(probe_id="p-1", batch_id="batch-0001", city="lishui", isp="ct", results=[_result(1), _result(2)],
                  stats={"spool_backlog": 12.0, "spool_dropped_total": 0.0})  # fmt: skip
    assert probe_line(batch, 5) == "qiancheng_probe,city=lishui,isp=ct,probe=p-1 results=2i,spool_backlog=12,spool_dropped_total=0 5"
    body = batch_lines(batch, batch.results[1:], 5).split("\n")
    assert len(body) == 2 and "seq=2i" in body[0] and body[1].startswith("qiancheng_probe,")
