"""The wire format between probe and collector: a batch of numbered results, JSON, optionally gzip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Final

import msgspec

from .result import NAME_PATTERN, BadName, Result

__all__ = ["Batch", "Label", "LABEL_VALUE_PATTERN", "RESULTS_PATH", "MAX_RESULTS_PER_BATCH", "PLAN_HEADER",
           "USER_AGENT_PREFIX", "encode_batch", "decode_batch", "decode_batch_as_sent", "Sent"]

RESULTS_PATH: Final = "/api/v1/results"
#: Two strings of fleet health ride beside the batch as headers, not in it: a collector older than its
#: probes refuses unknown batch fields, but ignores headers it does not know. The probe's software
#: version is in its User-Agent (`qiancheng-probe/0.1.0`); the version of the central plan it runs (16
#: hex digits, as GET /api/v1/plan gave it) in Qiancheng-Plan. Its numeric health is in `stats`.
PLAN_HEADER: Final = "Qiancheng-Plan"
USER_AGENT_PREFIX: Final = "qiancheng-probe/"
MAX_RESULTS_PER_BATCH: Final = 10_000

#: a label value (city, isp, labels): what Prometheus shows, so bounded in length, and with no control
#: characters (they would garble a log line, a dashboard or a terminal)
LABEL_VALUE_PATTERN: Final = r"^[^\x00-\x1f\x7f]*$(?!\n)"
Label = Annotated[str, msgspec.Meta(max_length=128, pattern=LABEL_VALUE_PATTERN)]
LabelName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$(?!\n)")]


ProbeId = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
BatchId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_\-]{8,64}$(?!\n)")]
Labels = Annotated[dict[LabelName, Label], msgspec.Meta(max_length=16)]
# the probe's own accounting at send time (spool_backlog, spool_dropped_total, measured_total, ...) and
# its box's health (uptime_seconds, load1, cpus, clock_synced, clock_maxerror_seconds): numbers only
Stats = Annotated[dict[LabelName, Annotated[float, msgspec.Meta(ge=0)]], msgspec.Meta(max_length=32)]


class Batch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A probe's upload: its identity, a unique batch id kept across retries, and numbered results."""

    probe_id: ProbeId
    batch_id: BatchId
    results: Annotated[list[Result], msgspec.Meta(max_length=MAX_RESULTS_PER_BATCH)]
    city: Label = ""
    isp: Label = ""
    labels: Labels = {}
    stats: Stats = {}


class _SentBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A Batch whose results are kept as the JSON they were sent in, to be decoded one by one."""

    probe_id: ProbeId
    batch_id: BatchId
    results: Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_RESULTS_PER_BATCH)]
    city: Label = ""
    isp: Label = ""
    labels: Labels = {}
    stats: Stats = {}


#: each result of a batch as the probe sent it (JSON), in order: what decode_batch_as_sent keeps
Sent = Sequence[bytes | msgspec.Raw]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Batch)
_sent_decoder = msgspec.json.Decoder(_SentBatch)
_decode_result = msgspec.json.Decoder(Result).decode


def encode_batch(batch: Batch) -> bytes:
    """The batch as JSON bytes."""
    return _encoder.encode(batch)


def decode_batch(body: bytes) -> Batch:
    """Parse and validate a batch; raises msgspec.ValidationError or msgspec.DecodeError with a `$.path`."""
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as error:
        if not isinstance(bad := error.__cause__, BadName):
            raise
        # msgspec names the struct the name was found in (`$.results[3]`); name the field as well
        _, at, path = str(error).rpartition(" - at `")
        result_path = path.rstrip("`") if at else "$"
        raise msgspec.ValidationError(f"{bad} - at `{result_path}.{bad.field}`") from None


def decode_batch_as_sent(body: bytes) -> tuple[Batch, list[msgspec.Raw]]:
    """`decode_batch`, and each result's JSON as it came (a view into `body`), for a store that keeps
    results as sent rather than encoding them again. Raises as decode_batch does, at the same paths."""
    try:
        sent = _sent_decoder.decode(body)
        results = [_decode_result(raw) for raw in sent.results]
    except msgspec.DecodeError:
        decode_batch(body)  # raises the error at its path in the batch, not in the one result
        raise
    batch = Batch(probe_id=sent.probe_id, batch_id=sent.batch_id, results=results, city=sent.city, isp=sent.isp,
                  labels=sent.labels, stats=sent.stats)  # fmt: skip
    return batch, sent.results
