"""Reading request bodies of the sidecar's own API (size limits apply via client_max_size)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from signet_cluster.errors import ValidationFailed


async def read_json(request: web.Request) -> Any:
    """The JSON body, `{}` when empty; a clear 400 when it is not JSON."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValidationFailed(["body is nested too deeply"]) from None
    except ValueError as exc:
        raise ValidationFailed([f"body is not valid JSON: {exc}"]) from None
