"""Request bodies and responses as each daemon's HTTP framework produces them.

TS (Hono) parses any body as JSON and the handlers answer ``{"error": ...}``; Rust (axum)
runs its ``Json`` extractor first and answers its rejections as plain text: 415 without
``Content-Type: application/json``, 400 for a syntax error, 422 when the JSON does not fit
the handler's struct (contract §3, "Conventions shared by all routes").
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

Body = dict[str, Any]

_JSON_CT = "application/json"
_TEXT_CT = "text/plain"


def json_response(body: object, status: int = 200) -> web.Response:
    # Compact separators: what JSON.stringify and serde_json write.
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return web.Response(text=text, status=status, content_type=_JSON_CT)


def error(message: str, status: int, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status)


def text_response(text: str, status: int) -> web.Response:
    return web.Response(text=text, status=status, content_type=_TEXT_CT)


def not_found_text() -> web.Response:
    """Hono's (and our Rust stand-in's) answer for an unknown route."""
    return text_response("404 Not Found", 404)


class BodyRejected(Exception):
    """Raised while reading a body; carries the response the daemon would send."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


# -- Rust struct shapes ----------------------------------------------------------------
# field -> expected JSON kind; a leading "!" marks a required field. Only the fields a
# sidecar sends are described; unknown fields are ignored, as serde does by default.

RustShape = tuple[str, dict[str, str]]

RECALL_SHAPE: RustShape = (
    "RecallBody",
    {
        "!query": "string",
        "keywordQuery": "string",
        "limit": "u32",
        "agentId": "string",
        "type": "string",
        "tags": "string",
        "who": "string",
        "pinned": "bool",
        "importanceMin": "f64",
        "since": "string",
        "until": "string",
        "scope": "string",
        "project": "string",
    },
)
REMEMBER_SHAPE: RustShape = (
    "RememberBody",
    {
        "content": "string",
        "who": "string",
        "project": "string",
        "importance": "f64",
        "pinned": "bool",
        "sourceType": "string",
        "sourceId": "string",
        "createdAt": "string",
        "idempotencyKey": "string",
        "type": "string",
        "agentId": "string",
        "visibility": "string",
        "scope": "string",
        "sessionKey": "string",
    },
)
MODIFY_SHAPE: RustShape = ("ModifyBody", {"!patches": "patches", "reason": "string"})
FORGET_SHAPE: RustShape = (
    "ForgetBody",
    {
        "mode": "string",
        "ids": "array",
        "query": "string",
        "limit": "u32",
        "reason": "string",
        "force": "bool",
    },
)
AGENT_SHAPE: RustShape = (
    "CreateBody",
    {"name": "string", "read_policy": "string", "policy_group": "string"},
)
SESSION_START_SHAPE: RustShape = (
    "SessionStartBody",
    {
        "harness": "string",
        "agentId": "string",
        "sessionKey": "string",
        "runtimePath": "string",
        "project": "string",
    },
)
EXPAND_SHAPE: RustShape = ("ExpandRequest", {"entity": "string", "agentId": "string"})
ANY_SHAPE: RustShape = ("Value", {})

_KIND_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "u32": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32,
    "f64": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
}


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, str):
        return f'string "{value}"'
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, list):
        return "sequence"
    return "map" if isinstance(value, dict) else "null"


def _expected(kind: str) -> str:
    names = {"u32": "u32", "f64": "f64", "bool": "a boolean", "array": "a sequence"}
    return names.get(kind, "a string")


def _shape_error(body: object, shape: RustShape) -> str | None:
    """The serde error for ``body`` against ``shape``, or None when it fits."""
    name, fields = shape
    if name == "Value":
        return None
    if not isinstance(body, dict):
        return f"invalid type: {_describe(body)}, expected struct {name}"
    for spec, kind in fields.items():
        field = spec.lstrip("!")
        value = body.get(field)
        if value is None:
            if spec.startswith("!"):
                if field not in body:
                    return f"missing field `{field}`"
                return f"{field}: invalid type: null, expected {_expected(kind)}"
            continue
        if kind == "patches":
            problem = _patches_error(value)
            if problem:
                return f"{field}{problem}"
        elif not _KIND_CHECKS[kind](value):
            return f"{field}: invalid type: {_describe(value)}, expected {_expected(kind)}"
    return None


def _patches_error(value: object) -> str | None:
    # Rust's modify takes nested patches: [{id, patch: {...}, if_version?}].
    if not isinstance(value, list):
        return f": invalid type: {_describe(value)}, expected a sequence"
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            return f"[{index}]: invalid type: {_describe(item)}, expected struct ModifyPatch"
        if "id" not in item:
            return f"[{index}]: missing field `id`"
        if "patch" not in item:
            return f"[{index}]: missing field `patch`"
        if not isinstance(item["patch"], dict):
            return f"[{index}].patch: invalid type: {_describe(item['patch'])}, expected struct PatchFields"
    return None


def _position(raw: str) -> str:
    lines = raw.split("\n")
    return f"line {len(lines)} column {len(lines[-1])}"


async def read_body(request: web.Request, *, rust: bool, shape: RustShape = ANY_SHAPE) -> object:
    """The parsed JSON body, or :class:`BodyRejected` with the daemon's own answer.

    TS: a body that is not JSON raises with ``400 {"error":"Invalid JSON body"}``; callers
    that answer differently catch it. Rust: axum's plain-text rejections.
    """
    raw = await request.text()
    if rust:
        mime = request.content_type
        if not (mime == _JSON_CT or (mime.startswith("application/") and mime.endswith("+json"))):
            raise BodyRejected(
                text_response("Expected request with `Content-Type: application/json`", 415)
            )
    try:
        body = json.loads(raw)
    except ValueError as exc:
        if not rust:
            raise BodyRejected(error("Invalid JSON body", 400)) from exc
        detail = getattr(exc, "msg", "expected value").lower()
        where = f"line {getattr(exc, 'lineno', 1)} column {getattr(exc, 'colno', 0)}"
        raise BodyRejected(
            text_response(f"Failed to parse the request body as JSON: {detail} at {where}", 400)
        ) from exc
    if rust:
        problem = _shape_error(body, shape)
        if problem is not None:
            raise BodyRejected(
                text_response(
                    "Failed to deserialize the JSON body into the target type: "
                    f"{problem} at {_position(raw)}",
                    422,
                )
            )
    return body


async def read_object(request: web.Request, *, rust: bool, shape: RustShape = ANY_SHAPE) -> Body:
    """Like :func:`read_body`, but a JSON value that is not an object reads as ``{}``."""
    body = await read_body(request, rust=rust, shape=shape)
    return body if isinstance(body, dict) else {}
