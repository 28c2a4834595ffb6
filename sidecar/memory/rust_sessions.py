"""Rust daemons refuse a write for a non-default agent (or a private or scoped write) unless
the body carries an *active* `agent:<id>:` session key, i.e. one claimed through
session-start with a runtime path (contract §3, remember, Rust). TS needs nothing of the
kind, so to keep one client body working on every flavor the sidecar opens a session of its
own per agent, once, and puts its key in the forwarded write.
"""

from __future__ import annotations

import json

import attrs
from multidict import CIMultiDict

from sidecar.memory.forward import DaemonClient, DaemonError

HARNESS = "signet-cluster"


def session_key(agent: str) -> str:
    return f"agent:{agent}:{HARNESS}"


def not_active(status: int, body: bytes) -> bool:
    """A Rust refusal because the session key is not (or no longer) active."""
    return status == 403 and b"session_key is not active" in body


@attrs.define
class RustSessions:
    """Session keys this sidecar has opened on its daemon (reset when the daemon restarts,
    detected by the daemon refusing the key)."""

    opened: set[str] = attrs.Factory(set)

    async def ensure(self, daemon: DaemonClient, agent: str, *, again: bool = False) -> str:
        key = session_key(agent)
        if key in self.opened and not again:
            return key
        body = json.dumps(
            {"harness": HARNESS, "agentId": agent, "sessionKey": key, "runtimePath": "plugin"}
        ).encode()
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
        raw = await daemon.send("POST", "/api/hooks/session-start", headers, body)
        if raw.status != 200:
            raise DaemonError(
                f"could not open a session for agent {agent!r} on the Rust daemon "
                f"(session-start answered {raw.status}: {raw.body[:200].decode('utf-8', 'replace')})",
                timed_out=False,
            )
        self.opened.add(key)
        return key
