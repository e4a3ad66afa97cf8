"""The OpenAPI 3.1 document of the collector's HTTP API, generated from the Structs the code uses."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from qiancheng.core.enrollment import ENROLL_PATH, Enrolled, EnrollRequest
from qiancheng.core.plan_wire import PLAN_PATH, PLAN_VERSION_PATTERN, Plan
from qiancheng.core.wire import MAX_RESULTS_PER_BATCH, PLAN_HEADER, RESULTS_PATH, Batch

from .bodies import Ack, ErrorBody, Health, LatestResponse, PathsResponse, ProbesResponse, SlaResponse
from .fleet import DEFAULT_STALE_AFTER_SECONDS, STATES

__all__ = ["OPENAPI_PATH", "LATEST_PATH", "PROBES_PATH", "SLA_PATH", "HEALTH_PATH", "METRICS_PATH", "openapi_document"]

OPENAPI_PATH: Final = "/api/v1/openapi.json"
LATEST_PATH: Final = "/api/v1/latest"
PATHS_PATH: Final = "/api/v1/paths"
#: the most path changes GET /api/v1/paths returns per (probe, target)
MAX_PATH_CHANGES: Final = 1000
PROBES_PATH: Final = "/api/v1/probes"
SLA_PATH: Final = "/api/v1/sla"
HEALTH_PATH: Final = "/healthz"
METRICS_PATH: Final = "/metrics"

_REF = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("ErrorBody")}},
    }
    if headers:
        response["headers"] = headers
    return response


def _sla_get(schema: dict[str, Any]) -> dict[str, Any]:
    filters = [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}
        for name, text in (
            ("city", "only series of probes in this city"),
            ("isp", "only series of probes on this ISP"),
            ("probe", "only this probe"),
            ("target", "only this target name"),
            ("profile", "only this SLA profile (400 if sla.yaml does not define it)"),
        )
    ]
    return {
        "operationId": "getSla",
        "summary": "SLA judgement: every objective of every applicable profile, per series, with per-window values",
        "description": (
            "From the latest judgement pass (every sla.interval). Each objective's indicator is computed over "
            "sliding windows of the stored results (exact percentiles over the raw samples); the first window "
            "judges. A breach opens after open_after consecutive bad windows and closes after close_after good "
            "ones; `since_ns` is when the current status began. `no_data` means nothing was measured for the "
            "indicator in the judging window: neither a pass nor a breach. Thresholds and values are in base "
            "units (seconds, ratios 0..1, bits per second). Filters are exact matches; several combine with AND."
        ),
        "parameters": filters,
        "responses": {
            "200": {"description": "The latest pass.", "content": {"application/json": {"schema": schema}}},
            "400": _error("An unknown query parameter, or a profile sla.yaml does not define."),
            "404": _error("SLA judgement is not configured (sla.profiles in the collector config)."),
        },
    }


def _paths_get(schema: dict[str, Any]) -> dict[str, Any]:
    parameters = [
        {"name": "probe", "in": "query", "required": False, "schema": {"type": "string"}, "description": "only this probe"},
        {"name": "target", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "only this target name"},
        {"name": "changes", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 0, "maximum": MAX_PATH_CHANGES, "default": 20},
         "description": "path changes to return per (probe, target), newest first"},
    ]
    return {
        "operationId": "getPaths",
        "summary": "The latest traced path of each (probe, target), hop by hop, and its history of changes",
        "description": (
            "From the store: the latest `path` result of each (probe, target) with its hops (per flow and TTL: "
            "address, probes sent and answered, loss, RTT last/median/best/worst, rate limiting, MPLS labels, "
            "AS number), and the latest path changes, each with the fingerprints before and after. With the "
            "influx backend the changes are those stored since the collector started (InfluxDB holds all)."
        ),
        "parameters": parameters,
        "responses": {
            "200": {"description": "From the store.", "content": {"application/json": {"schema": schema}}},
            "400": _error("`changes` is not an integer within 0..1000."),
            "503": _error("The store cannot be read."),
        },
    }


def _probes_get(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": "getProbes",
        "summary": "The fleet: every registered probe, when it was last heard from, and its state",
        "description": (
            "States: `revoked` (the registry refuses it), `never` (registered, no batch yet), `stale` (its latest "
            "batch is older than stale_after), `ok`. Filters are exact matches; several combine with AND."
        ),
        "parameters": [
            {"name": "city", "in": "query", "required": False, "schema": {"type": "string"}, "description": "only this city"},
            {"name": "isp", "in": "query", "required": False, "schema": {"type": "string"}, "description": "only this ISP"},
            {"name": "state", "in": "query", "required": False, "schema": {"type": "string", "enum": list(STATES)},
             "description": "only probes in this state"},
            {"name": "version", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "only probes whose latest batch came from this software version"},
            {"name": "stale_after", "in": "query", "required": False,
             "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 365 * 86400},
             "description": f"seconds without a batch after which a probe is stale (default {DEFAULT_STALE_AFTER_SECONDS:g})"},
        ],
        "responses": {
            "200": {"description": "From the registry and what the collector received.",
                    "content": {"application/json": {"schema": schema}}},
            "400": _error("An unknown query parameter, an unknown state, or a bad stale_after."),
        },
    }


def _plan_get(schema: dict[str, Any]) -> dict[str, Any]:
    def query(name: str, text: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": {"type": "string", "maxLength": 161}, "description": text}

    return {
        "operationId": "getPlan",
        "summary": "The asking probe's test plan, expanded from the collector's plan.yaml",
        "description": (
            "The probe is who its token says. Its city and ISP are the registry's when it was enrolled with them, "
            "else the query's (as its batches say them); labels select overrides. The body's `version` changes "
            "exactly when the probe's targets do; it is also the ETag, and a request whose If-None-Match holds it "
            "is answered 304 without a body. Kind settings are as plan.yaml writes them (durations as text)."
        ),
        "security": [{"probeToken": []}],
        "parameters": [
            query("city", "the probe's city (ignored for a probe enrolled with one)"),
            query("isp", "the probe's ISP (ignored for a probe enrolled with one)"),
            {**query("label", "a label of the probe, key:value; repeated"), "style": "form", "explode": True},
            {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {"description": "The probe's plan.", "headers": {"ETag": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": schema}}},
            "304": {"description": "The probe already holds this version.", "headers": {"ETag": {"schema": {"type": "string"}}}},
            "400": _error("An unknown query parameter, or a city, ISP or label that is not a label value."),
            "401": _error("No bearer token, or one no probe has.", {"WWW-Authenticate": {"schema": {"type": "string"}}}),
            "403": _error("The probe is revoked, or (mutual TLS) its certificate names another probe."),
            "404": _error("This collector serves no plan (no plan.file in its config)."),
            "422": _error("No plan can be made for this probe (a city the plan does not know, more targets than "
                          "limits.max_targets_per_probe); `field` is the plan.yaml path at fault."),
        },
    }


def _enroll_post(request: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": "postEnroll",
        "summary": "Trade a one-time enrollment code for a probe id and token (qiancheng-probe enroll)",
        "description": (
            "The code comes from `qiancheng-collector enroll`; it works once and until it expires. The answer "
            "carries the new probe's token, shown this once (the collector keeps its hash). Each client address "
            "may try 10 times, then once every 6 s. With mutual TLS the client certificate must name the probe."
        ),
        "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
        "responses": {
            "200": {"description": "Enrolled.", "content": {"application/json": {"schema": answer}}},
            "400": _error("The body is not JSON."),
            "403": _error("No such code, or (mutual TLS) a certificate naming another probe."),
            "409": _error("The code was used already, or its probe id was registered since."),
            "410": _error("The code expired."),
            "413": _error("A body over 4 KiB."),
            "422": _error("JSON that is not {\"code\": \"...\"}."),
            "429": _error("Too many attempts from this address.", {"Retry-After": {"schema": {"type": "integer"}}}),
        },
    }


def openapi_document(version: str, max_body_bytes: int) -> dict[str, Any]:
    """The OpenAPI 3.1 document (a JSON-ready dict) for this collector's limits."""
    (batch, ack, _, health, latest, sla, probes, plan, enroll, enrolled, paths), components = msgspec.json.schema_components(
        (Batch, Ack, ErrorBody, Health, LatestResponse, SlaResponse, ProbesResponse, Plan, EnrollRequest, Enrolled,
         PathsResponse),
        ref_template=_REF,
    )
    results_post = {
        "operationId": "postResults",
        "summary": "Push a batch of results (a probe's upload)",
        "description": (
            "The collector answers 200 only once the batch is durably committed. A repeated `batch_id` "
            "(same probe) is acknowledged with `duplicate: true` and stored nothing twice; a result is "
            "also unique on (probe_id, seq), so one re-sent in another batch is stored once. The body "
            "is JSON, optionally `Content-Encoding: gzip`; its size is limited before and after "
            f"inflation (limits.max_body_bytes, here {max_body_bytes} bytes), and a batch holds at most "
            f"limits.max_results_per_batch results (≤ {MAX_RESULTS_PER_BATCH}). Every refusal is JSON "
            "with `error` and, when a value is at fault, its JSON path in `field`."
        ),
        "security": [{"probeToken": []}],
        "parameters": [
            {
                "name": "Content-Encoding",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "enum": ["gzip", "identity"]},
            },
            {
                "name": PLAN_HEADER,
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": PLAN_VERSION_PATTERN},
                "description": "The version of the central plan the probe runs (as GET /api/v1/plan gave it); "
                               "its software version is in its User-Agent (`qiancheng-probe/VERSION`).",
            },
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": batch}}},
        "responses": {
            "200": {
                "description": "Stored now (`duplicate: false`), or already stored before (`duplicate: true`).",
                "content": {"application/json": {"schema": ack}},
            },
            "400": _error(f"The body is not JSON, or says gzip but does not inflate, or {PLAN_HEADER} is no plan version."),
            "401": _error(
                "No bearer token, or one no probe has.",
                {"WWW-Authenticate": {"schema": {"type": "string"}}},
            ),
            "403": _error("The token belongs to another probe than the batch's `probe_id`."),
            "413": _error("The body (as sent or inflated) or the number of results exceeds the limits."),
            "415": _error("Content-Type is not JSON, or Content-Encoding is neither gzip nor identity."),
            "422": _error("JSON that is not a valid batch; `field` is the path of the value at fault."),
            "500": _error("A bug in the collector (logged); retry later."),
            "503": _error(
                "The store could not commit; nothing was stored. Retry after the given seconds.",
                {"Retry-After": {"schema": {"type": "integer"}}},
            ),
        },
    }
    filters = [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}
        for name, text in (
            ("probe", "only this probe (totals then count this probe only)"),
            ("target", "only this target name"),
            ("kind", "only this measurement kind"),
        )
    ]
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "qiancheng collector",
            "version": version,
            "description": "Ingest of probe results, test plans, the fleet, the latest results, traced paths, SLA judgement, health, and Prometheus metrics.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": {
            RESULTS_PATH: {"post": results_post},
            LATEST_PATH: {
                "get": {
                    "operationId": "getLatest",
                    "summary": "The latest stored result of each (probe, target, kind), the probes, and totals",
                    "parameters": filters,
                    "responses": {
                        "200": {"description": "From the store.", "content": {"application/json": {"schema": latest}}},
                        "503": _error("The store cannot be read."),
                    },
                }
            },
            PATHS_PATH: {"get": _paths_get(paths)},
            PLAN_PATH: {"get": _plan_get(plan)},
            ENROLL_PATH: {"post": _enroll_post(enroll, enrolled)},
            PROBES_PATH: {"get": _probes_get(probes)},
            SLA_PATH: {"get": _sla_get(sla)},
            HEALTH_PATH: {
                "get": {
                    "operationId": "getHealth",
                    "summary": "Health: the process is up and the store answers",
                    "responses": {
                        "200": {"description": "Healthy.", "content": {"application/json": {"schema": health}}},
                        "503": {"description": "The store fails.", "content": {"application/json": {"schema": health}}},
                    },
                }
            },
            METRICS_PATH: {
                "get": {
                    "operationId": "getMetrics",
                    "summary": "Prometheus metrics (text exposition format 0.0.4); see docs/metrics.md",
                    "responses": {"200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                }
            },
            OPENAPI_PATH: {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1.", "content": {"application/json": {"schema": {"type": "object"}}}}},
                }
            },
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "probeToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The probe's secret token; the collector keeps only its SHA-256.",
                }
            },
        },
    }
