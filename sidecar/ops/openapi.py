"""The OpenAPI 3.1 description of the sidecar's own cluster API (`/api/cluster/*`), served at
`GET /api/cluster/openapi.json`.

Request bodies are JSON Schemas derived from the same attrs classes the handlers structure
them into, so a field added to a message shows up here by itself; the operations table below
is checked against the router by tests/test_openapi.py (an undescribed route fails it).
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any

import attrs
from aiohttp import web

from sidecar.federation.contribute import ContributeRequest
from signet_cluster import __version__
from signet_cluster.admin import AdminState
from signet_cluster.protocol import (
    AdoptRequest,
    CoordinatorsUpdate,
    Heartbeat,
    JoinRequest,
    PromoteRequest,
    ReplaceRequest,
)
from signet_cluster.security.signing import (
    KEY_HEADER,
    NODE_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TS_HEADER,
)

OPENAPI_PATH = "/api/cluster/openapi.json"
_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    Any: {},
}


def _schema_for(tp: Any, components: dict[str, Any]) -> dict[str, Any]:
    if tp in _SCALARS:
        return dict(_SCALARS[tp])
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema_for(a, components) for a in args]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (tuple, list):
        item = args[0] if args else Any
        return {"type": "array", "items": _schema_for(item, components)}
    if origin is dict:
        return {"type": "object"}
    if attrs.has(tp):
        _component(tp, components)
        return {"$ref": f"#/components/schemas/{tp.__name__}"}
    return {}


def _component(cls: type[Any], components: dict[str, Any]) -> None:
    """Add `cls` (an attrs message) and everything it contains to the components."""
    if cls.__name__ in components:
        return
    components[cls.__name__] = {}  # placeholder: breaks cycles
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        properties[field.name] = _schema_for(hints[field.name], components)
        if field.default is attrs.NOTHING:
            required.append(field.name)
    components[cls.__name__] = {
        "type": "object",
        "description": (cls.__doc__ or cls.__name__).strip().splitlines()[0],
        "properties": properties,
        "required": required,
        # Newer peers may send fields this version does not know; they are ignored.
        "additionalProperties": True,
    }


@attrs.frozen
class Operation:
    method: str
    path: str
    summary: str
    access: str  # peer | admin | read | public (see sidecar/security/auth.py)
    body: type[Any] | None = None
    query: tuple[tuple[str, bool, str], ...] = ()  # (name, required, description)
    path_params: tuple[str, ...] = ()
    ok: str = "The result as JSON."


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        "/api/cluster/heartbeat",
        "A node's heartbeat; answered with the registry.",
        "peer",
        Heartbeat,
    ),
    Operation("get", "/api/cluster/info", "Who answers at this address (join probes).", "read"),
    Operation(
        "get",
        "/api/cluster/status",
        "Every node, agent and route as the freshest source sees it.",
        "read",
        query=(("local", False, "1: this sidecar's own view, without asking a coordinator"),),
    ),
    Operation(
        "post",
        "/api/cluster/join",
        "Add the sidecar at `address` to the cluster.",
        "admin",
        JoinRequest,
    ),
    Operation(
        "delete",
        "/api/cluster/peers/{node}",
        "Remove a node (id, URL, HOST:PORT or a host with one node).",
        "admin",
        path_params=("node",),
    ),
    Operation(
        "get",
        "/api/cluster/peers/{node}",
        "One node as the registry sees it.",
        "read",
        path_params=("node",),
    ),
    Operation(
        "post",
        "/api/cluster/coordinators",
        "Tell this sidecar which coordinators to heartbeat to.",
        "admin",
        CoordinatorsUpdate,
    ),
    Operation(
        "post",
        "/api/cluster/adopt",
        "Settle an agent claimed by several nodes.",
        "admin",
        AdoptRequest,
    ),
    Operation(
        "post",
        "/api/cluster/adopt/preview",
        "What adopt would change (owner, effective read policy), changing nothing.",
        "admin",
        AdoptRequest,
    ),
    Operation(
        "post",
        "/api/cluster/replace",
        "A node that came back under a new id takes the old id's membership and adoptions.",
        "admin",
        ReplaceRequest,
    ),
    Operation(
        "post",
        "/api/cluster/promote",
        "Make this sidecar a coordinator (or not).",
        "admin",
        PromoteRequest,
    ),
    Operation("get", "/api/cluster/admin", "Operator decisions held by this coordinator.", "read"),
    Operation(
        "post", "/api/cluster/admin", "Merge another coordinator's decisions.", "admin", AdminState
    ),
    Operation(
        "get",
        "/api/cluster/resolve",
        "Where an agent lives: owner node, its URL, policy and table age.",
        "read",
        query=(("agent_id", True, "the agent to resolve"),),
    ),
    Operation(
        "get", "/api/cluster/routes", "Every known agent and where requests for it go.", "read"
    ),
    Operation(
        "post",
        "/api/cluster/contribute",
        "This node's share of a federated recall (internal, between sidecars).",
        "peer",
        ContributeRequest,
    ),
    Operation("get", "/api/cluster/topology", "Live topology for the /cluster page.", "read"),
    Operation(
        "get", "/api/cluster/keyring", "Key ids this sidecar has loaded (never secrets).", "read"
    ),
    Operation("get", OPENAPI_PATH, "This document.", "public"),
)

_ACCESS = {
    "peer": "Sidecar to sidecar: must be signed (or mTLS) whenever the sidecar has a key.",
    "admin": "Admin: signed with an admin key (or an mTLS admin certificate), from loopback too unless allow_unsigned_loopback_admin.",
    "read": "Unsigned from loopback; signed (or mTLS) from other hosts.",
    "public": "Open to anyone.",
}

_SIGNATURE_DOC = (
    "HMAC-SHA256 (cluster key) or Ed25519 (admin and coordinator keys) over "
    "`signet-cluster-v2`, method, Host (which must name the receiver), path+query, timestamp, "
    "nonce, node id, key id, every signed header (Authorization, Content-Type, "
    "Content-Encoding, x-signet-*) and the body's SHA-256, joined by newlines, as unpadded "
    "base64url. See docs/signing.md for the exact format and test vectors."
)


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "code": {"type": "string"},
            "reason": {"type": "string"},
            "details": {},
        },
        "required": ["error"],
    }


def _responses(op: Operation) -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    responses: dict[str, Any] = {
        "200": {"description": op.ok, "content": {"application/json": {"schema": {}}}},
    }
    if op.access != "public":
        responses["401"] = {
            "description": "Not signed, badly signed, replayed or stale.",
            "content": error,
        }
        responses["403"] = {
            "description": "Signed by a node other than the one described.",
            "content": error,
        }
    if op.body is not None:
        responses["400"] = {
            "description": "Invalid body: every problem listed in `details`.",
            "content": error,
        }
        responses["408"] = {
            "description": "The body did not arrive within body_timeout.",
            "content": error,
        }
        responses["413"] = {"description": "Body larger than max_body_bytes.", "content": error}
    responses["default"] = {
        "description": "Other errors (JSON with `error` and `code`).",
        "content": error,
    }
    return responses


def build_document() -> dict[str, Any]:
    components: dict[str, Any] = {"Error": _error_schema()}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        parameters: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1},
            }
            for name in op.path_params
        ]
        parameters += [
            {
                "name": name,
                "in": "query",
                "required": req,
                "description": doc,
                "schema": {"type": "string"},
            }
            for name, req, doc in op.query
        ]
        entry: dict[str, Any] = {
            "summary": op.summary,
            "description": _ACCESS[op.access],
            "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_').replace('{', '').replace('}', '').replace('.', '_')}",
            "responses": _responses(op),
        }
        if parameters:
            entry["parameters"] = parameters
        if op.access != "public":
            entry["security"] = [{}, {"clusterSignature": []}, {"mutualTLS": []}]
        if op.body is not None:
            _component(op.body, components)
            entry["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}
                    }
                },
            }
        paths.setdefault(op.path, {})[op.method] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "signet-cluster sidecar cluster API",
            "version": __version__,
            "description": (
                "The sidecar's own API under /api/cluster/. Every other path is the Signet "
                "daemon's API, served or routed unchanged. " + _SIGNATURE_DOC
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "clusterSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": SIGNATURE_HEADER,
                    "description": (
                        f"Send {NODE_HEADER}, {KEY_HEADER}, {TS_HEADER} (Unix ms), "
                        f"{NONCE_HEADER} and {SIGNATURE_HEADER}. " + _SIGNATURE_DOC
                    ),
                },
                "mutualTLS": {
                    "type": "mutualTLS",
                    "description": "A client certificate the cluster CA issued; CN = node id.",
                },
            },
        },
    }


routes = web.RouteTableDef()


@routes.get(OPENAPI_PATH)
async def openapi(_request: web.Request) -> web.Response:
    return web.json_response(document())


@functools.cache
def document() -> dict[str, Any]:
    """Built once per process: it only depends on this build's code."""
    return build_document()
