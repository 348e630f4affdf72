"""Pydantic models for the router service's bodies: the HTTP contract, and its OpenAPI document.

Used by :mod:`gridenv.router.server` (validation of every request body before the policy sees
it), by :mod:`gridenv.router.bench` and by the tests. The request models are strict:

* unknown fields are errors (``extra="forbid"``), so a misspelt field is not silently ignored;
* numbers must be finite (NaN, Infinity and 1e999 are rejected) and in range;
* no coercion: ``true`` is not a number, ``"3"`` is not a count, ``1.0`` is not an integer;
* a key given twice in one object is an error (JSON parsers keep the last value in silence).

What depends on the policy (endpoint names, region and model names, the number of batch levels)
is checked by :class:`gridenv.router.runtime.RouterPolicy` after this validation, and appears in
the OpenAPI document served for that policy (:func:`openapi_document`).

The fields are not declared here: the models are built from the declarations of
:mod:`gridenv.core.interface` (``SITE_SIGNALS``, ``REQUEST_FIELDS``, ``HOUR_FIELD``: name, JSON
type, unit, range, meaning), so a signal added to the interface is a field of the body, with its
range, in the validation and in the served schema.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError, create_model
from pydantic_core import PydanticCustomError
from typing_extensions import NotRequired, Required, TypedDict

from gridenv.core.interface import HOUR_FIELD, REQUEST_FIELDS, SITE_SIGNALS, SLO_CLASSES, Signal
from gridenv.core.strict_yaml import DuplicateKeyError, unique_keys
from gridenv.router.prefix import HASH_INT_MAX, HASH_INT_MIN, MAX_HASH_CHARS

__all__ = [
    "field_of", "ENDPOINT_SIGNALS", "REQUEST_FIELDS", "HOUR_FIELD", "EndpointState", "RequestInfo", "RouteRequest",
    "RouteDecision", "ScoreAnswer", "Health", "ErrorDetail", "ErrorAnswer", "format_errors",
    "parse_route_request", "parse_route_body", "openapi_document", "MAX_ENDPOINTS",
]

#: Largest number of endpoint objects in one body (the policies route between <= 64 sites).
MAX_ENDPOINTS = 1024
#: Longest name (endpoint, region, model) accepted.
MAX_NAME_CHARS = 256

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)
_ANSWER = ConfigDict(extra="forbid", allow_inf_nan=False)


_TYPES = {"number": float, "integer": int, "boolean": bool, "string": str}
#: Declared bounds that are exclusive (the runtime requires an SLO > 0 and an hour < 24).
_EXCLUSIVE = {"ttft_slo_s": "minimum", "tpot_slo_s": "minimum", "hour_utc": "maximum"}
#: Field types narrower than the declaration's JSON type.
_CHOICES = {"slo_class": Literal[SLO_CLASSES]}  # type: ignore[valid-type]
#: One block hash: a 64-bit integer (signed or unsigned) or a short string.
BlockHash = Union[Annotated[int, Field(ge=HASH_INT_MIN, le=HASH_INT_MAX)],
                  Annotated[str, StringConstraints(min_length=1, max_length=MAX_HASH_CHARS)]]
#: Item type of each declared "array" field (its declared bounds are its length's).
_ITEMS = {"block_hashes": BlockHash}
#: ``name`` identifies the endpoint; the interface declares the signals besides it.
ENDPOINT_NAME = Signal("name", "string", "name", None, None, True,
                       "endpoint (site) name, one of the policy's sites")


def field_of(sig: Signal):
    """(type, pydantic Field) for a declared signal: its JSON type, range, unit and meaning."""
    kw: dict = {}
    if sig.type == "array":
        typ = list[_ITEMS[sig.name]]  # type: ignore[index]
        if sig.minimum is not None:
            kw["min_length"] = int(sig.minimum)
        if sig.maximum is not None:
            kw["max_length"] = int(sig.maximum)
        desc = sig.description + f" [{sig.unit}]"
        if sig.required:
            return (typ, Field(..., description=desc, **kw))
        return (Optional[typ], Field(None, description=desc + " (optional)", **kw))
    typ = _CHOICES.get(sig.name, _TYPES[sig.type])
    if sig.minimum is not None:
        kw["gt" if _EXCLUSIVE.get(sig.name) == "minimum" else "ge"] = sig.minimum
    if sig.maximum is not None:
        kw["lt" if _EXCLUSIVE.get(sig.name) == "maximum" else "le"] = sig.maximum
    if typ is str:
        kw.update(min_length=1, max_length=MAX_NAME_CHARS)
    desc = sig.description + (f" [{sig.unit}]" if sig.unit not in ("", "name", "flag") else "")
    if sig.required:
        return (typ, Field(..., description=desc, **kw))
    return (Optional[typ], Field(None, description=desc + " (optional)", **kw))


#: What a router sends per endpoint (site), live: ``name`` + the interface's SITE_SIGNALS.
ENDPOINT_SIGNALS: tuple[Signal, ...] = (ENDPOINT_NAME, *SITE_SIGNALS)


def _model(name: str, doc: str, signals: tuple[Signal, ...]) -> type[BaseModel]:
    return create_model(name, __config__=_STRICT, __doc__=doc, **{s.name: field_of(s) for s in signals})


EndpointState = _model("EndpointState", "Live state of one endpoint (site), as the router sees it.",
                       ENDPOINT_SIGNALS)
RequestInfo = _model("RequestInfo", "The request to route.", REQUEST_FIELDS)
_HourType, _HOUR = field_of(HOUR_FIELD)


class RouteRequest(BaseModel):
    """Body of ``POST /v1/route`` and ``POST /v1/score``: a snapshot of the endpoints + the request."""

    model_config = _STRICT
    endpoints: list[EndpointState] = Field(  # type: ignore[valid-type]
        ..., min_length=1, max_length=MAX_ENDPOINTS,
        description="one object per site of the policy (every site present, each once)")
    request: RequestInfo  # type: ignore[valid-type]
    hour_utc: _HourType = _HOUR  # type: ignore[valid-type]


# The same body as plain dicts: TypedDicts with the same fields, types, ranges and strictness,
# validated by pydantic-core straight from the JSON bytes into the dicts the runtime reads (no
# model objects to build and dump again: half the time of RouteRequest + model_dump per body).
# tests/router/test_server.py checks that both accept and refuse the same bodies, with the same
# errors.
def _typed_dict(name: str, fields: dict) -> type:
    td = TypedDict(name, fields)  # type: ignore[misc]
    td.__pydantic_config__ = _STRICT  # type: ignore[attr-defined]
    return td


def _dict_fields(signals: tuple[Signal, ...]) -> dict:
    out = {}
    for sig in signals:
        typ, field = field_of(sig)
        out[sig.name] = (Required if sig.required else NotRequired)[Annotated[typ, field]]
    return out


_EndpointDict = _typed_dict("EndpointState", _dict_fields(ENDPOINT_SIGNALS))
_RequestDict = _typed_dict("RequestInfo", _dict_fields(REQUEST_FIELDS))
_RouteBody = _typed_dict("RouteRequest", {
    "endpoints": Required[Annotated[list[_EndpointDict], RouteRequest.model_fields["endpoints"]]],  # type: ignore[valid-type]
    "request": Required[_RequestDict],  # type: ignore[valid-type]
    "hour_utc": NotRequired[Annotated[_HourType, _HOUR]],  # type: ignore[valid-type]
})
_ROUTE_BODY = TypeAdapter(_RouteBody)


class RouteDecision(BaseModel):
    """Answer of ``POST /v1/route``."""

    model_config = _ANSWER
    endpoint: Optional[str] = Field(..., description="chosen site, null when shedding")
    shed: bool = Field(..., description="the policy rejects the request (answer 429 upstream)")
    batch_level: int = Field(..., ge=0, description="index into batch_levels")
    max_batch_size: int = Field(..., ge=1, description="the batch size that level stands for [requests]")
    scores: dict[str, float] = Field(..., description="per site: the policy's probability of choosing "
                                     "it, in [0, 1] (infeasible sites 0)")
    shed_score: float = Field(..., ge=0, le=1, description="probability of shedding; with scores sums to 1")
    site_index: int = Field(..., ge=0, description="the environment's site slot (max_sites = shed)")
    action: list[int] = Field(..., min_length=2, max_length=2, description="environment action "
                              "[site_index, batch_level]")


class ScoreAnswer(BaseModel):
    """Answer of ``POST /v1/score`` (llm-d scorer style)."""

    model_config = _ANSWER
    scores: dict[str, float] = Field(..., description="per endpoint: a score in [0, 1]")
    shed_score: float = Field(..., ge=0, le=1)
    best: Optional[str] = Field(..., description="highest-scoring endpoint, null when shedding")
    shed: bool
    batch_level: int = Field(..., ge=0)
    max_batch_size: int = Field(..., ge=1)


class Health(BaseModel):
    """Answer of ``GET /healthz``."""

    model_config = ConfigDict(extra="allow")
    status: Literal["ok"]
    policy_sha256: str
    format_version: int
    scenario: str
    env_id: str
    sites: list[str]
    max_sites: int
    batch_levels: list[int]
    obs_size: int


class ErrorDetail(BaseModel):
    """One problem with a request: where (``endpoints[2].kv_util``) and what."""

    loc: str = Field(..., description="path of the field at fault ('body' for the whole body)")
    msg: str
    type: str = Field(..., description="error kind, e.g. missing, extra_forbidden, greater_than_equal")


class ErrorAnswer(BaseModel):
    """Every 4xx/5xx answer: ``error`` is one line naming the field and the problem."""

    error: str
    errors: list[ErrorDetail] = Field(default_factory=list)


# ---------------------------------------------------------------------------- error messages
def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _show(v: Any) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    try:
        s = json.dumps(v) if isinstance(v, (str, int, float, bool)) or v is None else None
    except (TypeError, ValueError):
        s = None
    if s is None:
        s = {dict: "an object", list: "a list"}.get(type(v), type(v).__name__)
    return s if len(s) <= 60 else s[:57] + "..."


def _allowed(loc: tuple) -> str:
    if len(loc) >= 2 and loc[0] == "endpoints":
        names = EndpointState.model_fields
    elif loc and loc[0] == "request":
        names = RequestInfo.model_fields
    else:
        names = RouteRequest.model_fields
    return ", ".join(names)


def _model_order(errors: list, depth: int = 0) -> list:
    """The errors in the order the models give them: at each object, its unknown fields first,
    then the errors of its fields in their order (the dict form lists unknown fields last)."""
    extras, groups = [], {}
    for e in errors:
        loc = e["loc"]
        if len(loc) == depth + 1 and e["type"] == "extra_forbidden":
            extras.append(e)
        else:
            groups.setdefault(loc[depth] if len(loc) > depth else None, []).append(e)
    out = extras
    for key, group in groups.items():
        out += group if key is None or len(group) == 1 else _model_order(group, depth + 1)
    return out


def format_errors(err: ValidationError) -> list[dict]:
    """A ValidationError as ``[{"loc": "endpoints[1].kv_util", "msg": ..., "type": ...}]``."""
    out = []
    hash_items = set()  # a bad block hash fails both union branches: one error per item
    for e in _model_order(err.errors(include_url=False)):
        loc, kind = e["loc"], e["type"]
        if kind == "dict_type":  # the dict form's "not an object": said as the model form says it
            kind, e = "model_type", {**e, "type": "model_type", "msg": "Input should be an object"}
        if len(loc) >= 3 and loc[-3] == "block_hashes" and isinstance(loc[-2], int):
            if loc[:-1] not in hash_items:
                hash_items.add(loc[:-1])
                out.append({"loc": _loc(loc[:-1]), "msg": f"expected an integer in [-2^63, 2^64) or a string of "
                            f"1-{MAX_HASH_CHARS} characters, got {_show(e.get('input'))}", "type": "block_hash"})
            continue
        if kind == "json_invalid":
            msg = f"invalid JSON: {e.get('ctx', {}).get('error', e['msg'])}"
            out.append({"loc": "body", "msg": msg, "type": kind})
            continue
        if kind == "missing":
            msg = "missing (required field)"
        elif kind == "extra_forbidden":
            msg = f"unknown field (allowed: {_allowed(loc)})"
        else:
            msg = e["msg"][0].lower() + e["msg"][1:] + f", got {_show(e.get('input'))}"
        if kind == "model_type" and not loc:
            msg = f"expected a JSON object {{\"endpoints\": [...], \"request\": {{...}}}}, got {_show(e.get('input'))}"
        out.append({"loc": _loc(loc), "msg": msg, "type": kind})
    return out


def summary(errors: list[dict]) -> str:
    """One line: the first problem (``loc: msg``), and how many more there are."""
    first = errors[0]
    line = f"{first['loc']}: {first['msg']}"
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return line


def parse_route_request(raw: bytes | str) -> RouteRequest:
    """Parse and validate a body (JSON text); raises pydantic.ValidationError.

    pydantic-core's JSON parser has a nesting limit (a deeply nested body is an error, not a
    stack overflow) and rejects NaN/Infinity with ``allow_inf_nan=False``.
    """
    out = RouteRequest.model_validate_json(raw)
    _refuse_duplicate_keys(raw)
    return out


def parse_route_body(raw: bytes | str) -> dict:
    """:func:`parse_route_request` returning the validated body as the dict the runtime reads
    (what ``parse_route_request(raw).model_dump()`` gives, without building the models):
    the service's path. Same checks, same errors; raises pydantic.ValidationError."""
    out = _ROUTE_BODY.validate_json(raw)
    _refuse_duplicate_keys(raw)
    return out


def _refuse_duplicate_keys(raw: bytes | str) -> None:
    """A ValidationError when some object of the (already valid) body gives a key twice:
    pydantic's parser, like most, keeps the last value, so `{"hour_utc": 14.5, "hour_utc": 3}`
    would be routed at 3 h in silence. A second parse (about 10 us on a 5-site body)."""
    try:
        json.loads(raw, object_pairs_hook=unique_keys)
    except DuplicateKeyError as dup:
        key = dup.key
        raise ValidationError.from_exception_data("RouteRequest", [{
            "type": PydanticCustomError("duplicate_key", "key {key} given twice in one JSON object "
                                        "(which value is meant is ambiguous)", {"key": json.dumps(key)}),
            "loc": (), "input": key}]) from None


# ---------------------------------------------------------------------------- OpenAPI
_ERROR_STATUSES = {
    "400": "body is not JSON, or does not match the schema / the policy (the message names the field)",
    "408": "the body did not arrive in time (e.g. shorter than its Content-Length)",
    "413": "body larger than the service's limit",
}


def openapi_document(policy_info: dict | None = None, max_body_bytes: int | None = None) -> dict:
    """OpenAPI 3.1 document of the service, from the models' JSON Schemas.

    `policy_info` (``RouterPolicy.health()`` plus ``regions`` / ``models``) narrows the schema
    to the served policy: endpoint names, origins and models become enums, ``batch_level`` gets
    its maximum.
    """
    from pydantic.json_schema import models_json_schema

    models = [RouteRequest, RouteDecision, ScoreAnswer, Health, ErrorAnswer]
    _, defs = models_json_schema([(m, "validation") for m in models],
                                 ref_template="#/components/schemas/{model}")
    schemas = defs["$defs"]
    info_desc = "Routing decisions of an exported gridenv policy."
    if policy_info:
        ep = schemas["EndpointState"]["properties"]
        rq = schemas["RequestInfo"]["properties"]
        ep["name"]["enum"] = list(policy_info["sites"])
        if policy_info.get("regions"):
            rq["origin"]["enum"] = list(policy_info["regions"])
        if policy_info.get("models"):
            rq["model"]["enum"] = list(policy_info["models"])
        n_levels = len(policy_info["batch_levels"])
        bl = ep["batch_level"]
        for branch in bl.get("anyOf", [bl]):
            if branch.get("type") == "integer":
                branch["maximum"] = n_levels - 1
        ep_list = schemas["RouteRequest"]["properties"]["endpoints"]
        ep_list["minItems"] = ep_list["maxItems"] = len(policy_info["sites"])
        info_desc += (f" Policy: scenario {policy_info['scenario']}, sites {', '.join(policy_info['sites'])}, "
                      f"batch levels {policy_info['batch_levels']}, sha256 {policy_info['policy_sha256']}.")
    if max_body_bytes:
        info_desc += f" Request bodies are limited to {max_body_bytes} bytes."

    def ref(name: str) -> dict:
        return {"$ref": f"#/components/schemas/{name}"}

    def json_content(name: str) -> dict:
        return {"content": {"application/json": {"schema": ref(name)}}}

    errors = {code: {"description": d, **json_content("ErrorAnswer")} for code, d in _ERROR_STATUSES.items()}

    def post(summary_text: str, answer: str) -> dict:
        return {"post": {"summary": summary_text, "requestBody": {"required": True, **json_content("RouteRequest")},
                         "responses": {"200": {"description": "the decision", **json_content(answer)}, **errors}}}

    return {
        "openapi": "3.1.0",
        "info": {"title": "gridenv router", "version": "1", "description": info_desc},
        "paths": {
            "/v1/route": post("Route one request: chosen endpoint, shed, batch level, scores", "RouteDecision"),
            "/v1/score": post("Score every endpoint in [0, 1] (llm-d scorer style)", "ScoreAnswer"),
            "/healthz": {"get": {"summary": "Liveness and the served policy",
                                 "responses": {"200": {"description": "ok", **json_content("Health")}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
        "components": {"schemas": schemas},
    }
