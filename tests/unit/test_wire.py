"""Wire format: a batch survives encode/decode unchanged; a bad one is refused with the JSON path at fault."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import msgspec
import pytest

from qiancheng.core.result import BadKey, BadName, Result, Target, failure
from qiancheng.core.stats import train_stats
from qiancheng.core.wire import MAX_RESULTS_PER_BATCH, Batch, decode_batch, decode_batch_as_sent, encode_batch

START_NS = 1_700_000_000_000_000_000
# msgspec names the root by no path at all, and the mapping of a bad key by "- at `key` in `$.labels`"
_AT_PATH = re.compile(r" - at (?:`key` in )?`(\$[^`]*)`$")

GOOD_RESULT: dict[str, Any] = {
    "kind": "icmp",
    "target": {"name": "edge-1", "address": "198.18.0.1", "class": "edge"},
    "start_ns": START_NS,
    "duration_seconds": 0.2,
    "success": True,
    "figures": {"loss_ratio": 0.0},
    "info": {"socket": "ping"},
    "seq": 1,
}


def body(*results: dict[str, Any], **changes: Any) -> bytes:
    """A batch as JSON bytes, with the given results (one good one if none) and top-level changes."""
    batch: dict[str, Any] = {"probe_id": "p1", "batch_id": "batch-0001", "results": list(results) or [GOOD_RESULT]}
    batch.update(changes)
    return json.dumps(batch).encode()


def result(**changes: Any) -> dict[str, Any]:
    return {**GOOD_RESULT, **changes}


def refused(data: bytes) -> tuple[str, str]:
    """The reason and the `$.path` of the ValidationError that decoding `data` raises."""
    with pytest.raises(msgspec.ValidationError) as caught:
        decode_batch(data)
    message = str(caught.value)
    # the collector's decoder, which keeps each result as sent, refuses alike, at the same path
    with pytest.raises(msgspec.ValidationError) as caught_as_sent:
        decode_batch_as_sent(data)
    assert str(caught_as_sent.value) == message
    match = _AT_PATH.search(message)
    return (message[: match.start()], match[1]) if match else (message, "$")


def sample_batch() -> Batch:
    samples: list[float | None] = [0.0021, 0.0023, None, 0.0022, 0.0030]
    cloud = Target(name="oss-hangzhou", address="oss-cn-hangzhou.aliyuncs.com:443", target_class="cloud_pool")
    return Batch(
        probe_id="lishui-ct-01",
        batch_id="0123456789abcdef0123456789abcdef",
        city="lishui",
        isp="chinatelecom",
        labels={"site": "liandu", "rack": "r2"},
        stats={"spool_backlog": 3.0, "spool_dropped_total": 0.0},
        results=[
            Result(kind="icmp", target=Target(name="edge-1", address="198.18.0.1"), start_ns=START_NS,
                   duration_seconds=1.25, success=True, figures=train_stats(samples).figures(),
                   info={"address": "198.18.0.1", "socket": "raw", "size_bytes": "56"}, samples=samples, seq=41),
            Result(kind="dns", target=Target(name="resolver", address="198.18.0.53", target_class="dns"),
                   start_ns=START_NS + 1, duration_seconds=0.012, success=False, error="servfail",
                   detail="SERVFAIL for example.cn", figures={"lookup_seconds": 0.012, "rcode_value": 2.0},
                   info={"rcode": "SERVFAIL"}, seq=42),
            Result(kind="http", target=cloud, start_ns=START_NS + 2, duration_seconds=0.3, success=True,
                   figures={"connect_seconds": 0.004, "ttfb_seconds": 0.05, "status_code": 200.0},
                   info={"http_version": "HTTP/1.1"}, seq=43),
            failure("tcp", Target(name="idc-a", address="198.18.0.7:22", target_class="idc"), START_NS + 3, 3.0,
                    "timeout", "no SYN-ACK within 3 s"),
        ],
    )  # fmt: skip


# --- round trip


def test_a_batch_of_several_kinds_round_trips_unchanged() -> None:
    batch = sample_batch()
    decoded = decode_batch(encode_batch(batch))
    assert decoded == batch
    assert [r.kind for r in decoded.results] == ["icmp", "dns", "http", "tcp"]
    assert decoded.results[0].samples[2] is None  # a lost packet stays a lost packet
    assert decoded.results[3].seq == 0  # not yet numbered by the spool


def test_a_batch_decoded_as_sent_keeps_each_result_as_it_came() -> None:
    batch = sample_batch()
    body = encode_batch(batch).replace(b'"results":[{', b'"results":[ {', 1)  # as sent, spaces and all
    decoded, sent = decode_batch_as_sent(body)
    assert decoded == decode_batch(body) == batch
    assert len(sent) == len(batch.results) >= 2
    for raw, result in zip(sent, batch.results, strict=True):
        assert bytes(raw) in body and msgspec.json.decode(raw, type=Result) == result


def test_target_class_travels_as_class() -> None:
    encoded = json.loads(encode_batch(sample_batch()))
    targets = [r["target"] for r in encoded["results"]]
    assert targets[2] == {"name": "oss-hangzhou", "address": "oss-cn-hangzhou.aliyuncs.com:443", "class": "cloud_pool"}
    assert all("target_class" not in t for t in targets)
    assert "class" not in targets[0]  # the default, edge, is left out...
    assert decode_batch(encode_batch(sample_batch())).results[0].target.target_class == "edge"  # ...and comes back


def test_class_is_read_from_json() -> None:
    target = dict(GOOD_RESULT["target"], **{"class": "national_hub"})
    assert decode_batch(body(result(target=target))).results[0].target.target_class == "national_hub"


def test_defaults_are_left_out_of_the_json() -> None:
    batch = Batch(probe_id="p1", batch_id="batch-0001", results=[])
    assert json.loads(encode_batch(batch)) == {"probe_id": "p1", "batch_id": "batch-0001", "results": []}


def test_a_failure_with_a_long_detail_still_fits_the_wire() -> None:
    long = failure("tcp", Target(name="t", address="198.18.0.1:80"), START_NS, -0.5, "error", "x" * 5000)
    assert long.detail is not None and len(long.detail) == 1024
    assert long.duration_seconds == 0.0  # a clock step backwards is not a negative duration
    assert decode_batch(encode_batch(Batch(probe_id="p1", batch_id="batch-0001", results=[long]))).results == [long]


# --- refusals, each naming the path of the value at fault


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        # unknown fields, at each level
        (body(extra=1), "$", "unknown field `extra`"),
        (body(result(colour="red")), "$.results[0]", "unknown field `colour`"),
        (body(result(target={**GOOD_RESULT["target"], "target_class": "edge"})), "$.results[0].target",
         "unknown field `target_class`"),
        # wrong types
        (body(result(start_ns="yesterday")), "$.results[0].start_ns", "Expected `int`, got `str`"),
        (body(result(start_ns=1.5)), "$.results[0].start_ns", "Expected `int`, got `float`"),
        (body(result(success="yes")), "$.results[0].success", "Expected `bool`, got `str`"),
        (body(result(figures={"loss_ratio": "high"})), "$.results[0].figures[...]", "Expected `float`, got `str`"),
        (body(result(info={"rcode": 3})), "$.results[0].info[...]", "Expected `str`, got `int`"),
        (body(result(samples=[0.001, "lost"])), "$.results[0].samples[1]", "Expected `float | null`, got `str`"),
        (body(results={}), "$.results", "Expected `array`, got `object`"),
        # out of range
        (body(result(start_ns=-1)), "$.results[0].start_ns", "Expected `int` >= 0"),
        (body(result(duration_seconds=-0.001)), "$.results[0].duration_seconds", "Expected `float` >= 0.0"),
        (body(result(seq=-1)), "$.results[0].seq", "Expected `int` >= 0"),
        (body(stats={"spool_backlog": -1.0}), "$.stats[...]", "Expected `float` >= 0.0"),
        # names
        (body(result(kind="ICMP")), "$.results[0].kind", "matching regex"),
        (body(result(kind="1cmp")), "$.results[0].kind", "matching regex"),
        (body(result(kind="")), "$.results[0].kind", "matching regex"),
        (body(result(kind="k" * 33)), "$.results[0].kind", "matching regex"),
        (body(result(error="Timeout")), "$.results[0].error", "matching regex"),
        (body(result(target={**GOOD_RESULT["target"], "name": "edge west"})), "$.results[0].target.name",
         "matching regex"),
        (body(result(target={**GOOD_RESULT["target"], "name": "edge\n"})), "$.results[0].target.name", "matching regex"),
        (body(result(target={**GOOD_RESULT["target"], "class": "Edge"})), "$.results[0].target.class", "matching regex"),
        (body(probe_id="p 1"), "$.probe_id", "matching regex"),
        (body(batch_id="short"), "$.batch_id", "matching regex"),
        (body(labels={"Site": "x"}), "$.labels", "matching regex"),
        # lengths
        (body(result(detail="x" * 1025)), "$.results[0].detail", "Expected `str` of length <= 1024"),
        (body(result(info={"rcode": "x" * 1025})), "$.results[0].info[...]", "Expected `str` of length <= 1024"),
        (body(city="c" * 129), "$.city", "Expected `str` of length <= 128"),
        (body(result(target={**GOOD_RESULT["target"], "address": ""})), "$.results[0].target.address",
         "Expected `str` of length >= 1"),
        # missing
        (body(result(target=None)), "$.results[0].target", "Expected `object`, got `null`"),
    ],
)  # fmt: skip
def test_a_bad_batch_is_refused_at_the_path_of_the_fault(data: bytes, path: str, reason: str) -> None:
    message, at = refused(data)
    assert at == path
    assert reason in message


def test_a_missing_field_is_named() -> None:
    message, at = refused(body({k: v for k, v in GOOD_RESULT.items() if k != "success"}))
    assert (at, message) == ("$.results[0]", "Object missing required field `success`")


@pytest.mark.parametrize(
    "key",
    [
        "Loss_ratio",  # uppercase
        "rtt_" + "x" * 61,  # 65 characters, one over the limit
        "9lives",  # must start with a letter
        "_private",
        "rtt-median",  # hyphen
        "rtt median",
        "",
        "loss_ratio\n",  # `$` alone would let a trailing newline through
        "延迟",
    ],
)
@pytest.mark.parametrize("field", ["figures", "info"])
def test_a_bad_figure_or_info_key_is_refused_at_its_mapping(field: str, key: str) -> None:
    value: float | str = 1.0 if field == "figures" else "x"
    message, at = refused(body(result(), result(**{field: {"fine_name": value, key: value}})))
    assert at == f"$.results[1].{field}"
    assert message.startswith(f"Invalid key {key!r}: expected `str` matching regex")


def test_keys_at_the_limits_are_accepted() -> None:
    longest = "r" + "x" * 63
    decoded = decode_batch(body(result(figures={longest: 1.0, "a": 2.0, "p99_9": 3.0}, info={longest: "y"})))
    assert set(decoded.results[0].figures) == {longest, "a", "p99_9"}


def test_a_very_long_bad_key_is_shortened_in_the_message() -> None:
    message, at = refused(body(result(figures={"X" * 10_000: 1.0})))
    assert at == "$.results[0].figures"
    assert "(10000 characters)" in message and len(message) < 300


def test_a_key_refused_once_is_refused_again() -> None:
    # valid names are remembered to skip the regex; a refused one must not be
    for _ in range(2):
        assert refused(body(result(figures={"Bad": 1.0})))[1] == "$.results[0].figures"
        assert refused(body(result(kind="Icmp")))[1] == "$.results[0].kind"
        assert refused(body(result(target={**GOOD_RESULT["target"], "name": "-x"})))[1] == "$.results[0].target.name"


def test_a_target_with_a_bad_name_cannot_be_built() -> None:
    with pytest.raises(BadName) as caught:
        Target(name="edge west", address="198.18.0.1")
    assert (caught.value.field, caught.value.value) == ("name", "edge west")
    with pytest.raises(BadName, match="matching regex"):
        Target(name="edge", address="198.18.0.1", target_class="Edge")


def test_a_result_decoded_alone_refuses_a_bad_key_too() -> None:
    # the spool decodes results one by one, and sets aside those it cannot read
    payload = json.dumps(result(info={"Bad": "x"})).encode()
    with pytest.raises(msgspec.ValidationError, match=r"^Invalid key 'Bad': expected `str` matching regex"):
        msgspec.json.decode(payload, type=Result)


def test_a_result_with_a_bad_key_cannot_be_built() -> None:
    target = Target(name="t", address="198.18.0.1")
    with pytest.raises(BadKey) as caught:
        Result(kind="icmp", target=target, start_ns=0, duration_seconds=0.0, success=True, figures={"RTT": 1.0})
    assert (caught.value.field, caught.value.key) == ("figures", "RTT")
    assert isinstance(caught.value, ValueError)


# --- non-finite numbers: JSON cannot carry them, and the wire refuses every spelling of them


@pytest.mark.parametrize("spelling", [b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf"])
def test_nan_and_infinity_literals_are_not_json(spelling: bytes) -> None:
    data = body(result(figures={"loss_ratio": 12345.0})).replace(b"12345.0", spelling)
    with pytest.raises(msgspec.DecodeError, match="JSON is malformed") as caught:
        decode_batch(data)
    assert not isinstance(caught.value, msgspec.ValidationError)


@pytest.mark.parametrize("spelling", [b"1e999", b"-1e999"])
def test_a_number_too_large_for_a_double_is_refused(spelling: bytes) -> None:
    data = body(result(figures={"loss_ratio": 12345.0})).replace(b"12345.0", spelling)
    assert refused(data) == ("Number out of range", "$.results[0].figures[...]")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_figure_is_encoded_as_null_which_the_wire_refuses(value: float) -> None:
    target = Target(name="t", address="198.18.0.1")
    bad = Result(kind="icmp", target=target, start_ns=0, duration_seconds=0.0, success=True, figures={"x": value})
    encoded = encode_batch(Batch(probe_id="p1", batch_id="batch-0001", results=[bad]))
    assert b'"figures":{"x":null}' in encoded
    assert refused(encoded) == ("Expected `float`, got `null`", "$.results[0].figures[...]")


def test_at_most_max_results_per_batch() -> None:
    minimal = {k: GOOD_RESULT[k] for k in ("kind", "target", "start_ns", "duration_seconds", "success")}
    assert len(decode_batch(body(*[minimal] * MAX_RESULTS_PER_BATCH)).results) == MAX_RESULTS_PER_BATCH
    message, at = refused(body(*[minimal] * (MAX_RESULTS_PER_BATCH + 1)))
    assert (at, message) == ("$.results", f"Expected `array` of length <= {MAX_RESULTS_PER_BATCH}")


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("probe_id", "p1\n", "$.probe_id"),
        ("batch_id", "abcdefgh\n", "$.batch_id"),
        ("labels", {"site\n": "x"}, "$.labels"),
    ],
)
def test_a_trailing_newline_never_passes_a_name_pattern(field: str, value: object, path: str) -> None:
    batch = {"probe_id": "p1", "batch_id": "abcdefgh", "results": [], field: value}
    with pytest.raises(msgspec.ValidationError, match="matching regex") as caught:
        decode_batch(msgspec.json.encode(batch))
    assert path in str(caught.value)


def test_a_trailing_newline_in_a_kind_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.results\[0\]\.kind"):
        decode_batch(body(result(kind="icmp\n")))
