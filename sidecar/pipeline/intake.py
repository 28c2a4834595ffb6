"""Step 1: read and bound the request body, and note whether another node routed it here."""

from __future__ import annotations

from typing import Any

import attrs
from aiohttp import web

from sidecar import keys
from sidecar.membership.peers import HOP_HEADER
from sidecar.memory.proxy import parse_object, read_body


@attrs.frozen
class Intake:
    """The request as the later steps need it."""

    body: bytes  # exactly as received (forwarded as bytes when nothing changes it)
    parsed: dict[str, Any] | None  # the body as a JSON object, when it is one
    hop: bool  # another node routed it here: served here or refused, never routed again


async def read_request(request: web.Request) -> Intake:
    """Raises EarlyResponse (413 too large, 408 too slow)."""
    settings = request.app[keys.SETTINGS]
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout)
    parsed = parse_object(body) if request.method != "GET" else None
    return Intake(body=body, parsed=parsed, hop=HOP_HEADER in request.headers)
