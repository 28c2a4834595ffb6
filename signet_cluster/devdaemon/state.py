"""Everything one running dev daemon holds, reachable from handlers through one AppKey."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import attrs
from aiohttp import web

from .config import FAIL_MODES, DevDaemonConfig
from .cost import RecallCost, parse_cost
from .store import Store
from .util import Clock

REQUEST_LOG_SIZE = 200


@attrs.define(kw_only=True)
class Faults:
    """Injected latency and failures, changeable at run time via ``/__devdaemon/faults``."""

    latency_ms: float = 0.0
    fail: str = "none"
    # What a recall costs (devdaemon/cost.py); None: only what the dev daemon itself spends.
    recall_cost: RecallCost | None = None

    def update(self, body: dict[str, Any]) -> str | None:
        """Apply ``{latency_ms?, fail?, recall_cost?}``; returns an error message instead
        when invalid (and changes nothing)."""
        latency = body.get("latency_ms", self.latency_ms)
        fail = body.get("fail", self.fail)
        if isinstance(latency, bool) or not isinstance(latency, (int, float)) or latency < 0:
            return "latency_ms must be a number >= 0"
        if fail not in FAIL_MODES:
            return f"fail must be one of {', '.join(FAIL_MODES)}"
        cost = self.recall_cost
        if "recall_cost" in body:
            try:
                cost = parse_cost(body["recall_cost"])
            except ValueError as exc:
                return str(exc)
        self.latency_ms = float(latency)
        self.fail = str(fail)
        self.recall_cost = cost
        return None

    def as_dict(self) -> dict[str, Any]:
        cost = None if self.recall_cost is None else self.recall_cost.as_dict()
        return {"latency_ms": self.latency_ms, "fail": self.fail, "recall_cost": cost}


@attrs.define(kw_only=True)
class Sessions:
    """Session bookkeeping of the hooks: runtime-path claims and started sessions."""

    #: session key -> runtime path ("plugin" | "legacy") that claimed it.
    claims: dict[str, str] = attrs.Factory(dict)
    started: set[str] = attrs.Factory(set)
    #: TS recall dedupe: ids already returned per session key.
    recalled: dict[str, set[str]] = attrs.Factory(dict)


@attrs.define(kw_only=True)
class DaemonState:
    config: DevDaemonConfig
    clock: Clock
    faults: Faults
    started_monotonic: float = attrs.Factory(time.monotonic)
    started_at: str = ""
    sessions: Sessions = attrs.Factory(Sessions)
    requests: deque[dict[str, Any]] = attrs.Factory(lambda: deque(maxlen=REQUEST_LOG_SIZE))
    _store: Store | None = None

    @property
    def store(self) -> Store:
        # Set by the database cleanup context before the first request is served.
        if self._store is None:
            raise RuntimeError("dev daemon database is not open")
        return self._store

    def attach_store(self, store: Store | None) -> None:
        self._store = store

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic


STATE_KEY = web.AppKey("signet_devdaemon_state", DaemonState)


def state_of(request: web.Request) -> DaemonState:
    return request.app[STATE_KEY]
