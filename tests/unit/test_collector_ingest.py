"""Validation errors become 400 (not JSON) or 422 (not a batch) with the JSON path of the value at fault."""

from __future__ import annotations

import json

import msgspec
import pytest

from qiancheng.collector.ingest import Refused, refusal_for_decode_error
from qiancheng.core.wire import decode_batch

GOOD_RESULT = {
    "kind": "icmp",
    "target": {"name": "edge", "address": "127.0.0.1", "class": "edge"},
    "start_ns": 1_700_000_000_000_000_000,
    "duration_seconds": 0.2,
    "success": True,
    "seq": 1,
}


def batch(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {"probe_id": "p1", "batch_id": "batch-0001", "results": [dict(GOOD_RESULT)]}
    body.update(changes)
    return body


def refusal(body: bytes) -> Refused:
    with pytest.raises(msgspec.DecodeError) as caught:
        decode_batch(body)
    return refusal_for_decode_error(caught.value)


@pytest.mark.parametrize(
    ("body", "status", "field", "reason"),
    [
        (b'{"probe_id": "p1",', 400, "$", "not valid JSON"),
        (b"\xff\xfe not utf-8", 400, "$", "not valid JSON"),
        (b"", 400, "$", "not valid JSON"),
        (b"[1, 2]", 422, "$", "expected `object`, got `array`"),
        (json.dumps(batch(batch_id="short")).encode(), 422, "$.batch_id", "matching regex"),
        (json.dumps(batch(extra=1)).encode(), 422, "$.extra", "unknown field 'extra'"),
        (json.dumps(batch(results=[{**GOOD_RESULT, "start_ns": "yesterday"}])).encode(), 422,
         "$.results[0].start_ns", "expected `int`, got `str`"),
        (json.dumps(batch(results=[dict(GOOD_RESULT), {**GOOD_RESULT, "colour": "red"}])).encode(), 422,
         "$.results[1].colour", "unknown field 'colour'"),
        (json.dumps(batch(results=[{k: v for k, v in GOOD_RESULT.items() if k != "target"}])).encode(), 422,
         "$.results[0].target", "missing required field"),
        (json.dumps(batch(results=[{**GOOD_RESULT, "figures": {"loss_ratio": "high"}}])).encode(), 422,
         "$.results[0].figures[...]", "expected `float`, got `str`"),
        (json.dumps(batch(results=[{**GOOD_RESULT, "duration_seconds": 1e999}])).encode().replace(b"Infinity", b"1e999"),
         422, "$.results[0].duration_seconds", "out of range"),
        (json.dumps(batch(labels={"Site": "x"})).encode(), 422, "$.labels", "bad key: expected `str` matching regex"),
        (json.dumps(batch(results=[{**GOOD_RESULT, "figures": {"Loss": 1.0}}])).encode(), 422,
         "$.results[0].figures", "invalid key 'Loss'"),
    ],
)  # fmt: skip
def test_decode_errors_map_to_status_and_field(body: bytes, status: int, field: str, reason: str) -> None:
    refused = refusal(body)
    assert (refused.status, refused.field) == (status, field)
    assert reason in refused.error


def test_refusal_response_is_json_with_error_and_field() -> None:
    response = Refused(422, "expected `int`, got `str`", "$.results[0].seq").response()
    assert response.status == 422 and response.content_type == "application/json"
    assert isinstance(response.body, bytes)
    assert json.loads(response.body) == {"error": "expected `int`, got `str`", "field": "$.results[0].seq"}
