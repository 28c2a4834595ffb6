"""Heartbeats a coordinator refused, by sender and reason, so that `status` shows a host that
keeps trying and failing (wrong cluster key, a node id in use, no common protocol, removed)
as a problem instead of "Healthy". Kept in memory for a few minutes; logged at the first
refusal of each kind and then only counted."""

from __future__ import annotations

import attrs
from aiohttp import web

from signet_cluster.clock import Clock

# A refusal older than this is no longer a current problem.
WINDOW_S = 120.0


@attrs.define
class Refusal:
    sender: str  # the node id it claimed, else its address
    reason: str
    error: str
    count: int = 0
    first: float = 0.0
    last: float = 0.0


@attrs.define
class HeartbeatRefusals:
    clock: Clock
    window: float = WINDOW_S
    entries: dict[tuple[str, str], Refusal] = attrs.field(factory=dict)

    def record(self, sender: str, reason: str, error: str) -> bool:
        """Count one refusal; True when it is new (not seen within the window)."""
        now = self.clock.monotonic()
        self._forget(now)
        key = (sender, reason)
        entry = self.entries.get(key)
        fresh = entry is None
        if entry is None:
            entry = self.entries[key] = Refusal(
                sender=sender, reason=reason, error=error, first=now
            )
        entry.count += 1
        entry.last = now
        entry.error = error
        return fresh

    def forget_sender(self, *names: str) -> None:
        """An accepted heartbeat ends that sender's refusals (by any of its names)."""
        for key in [k for k in self.entries if k[0] in names]:
            del self.entries[key]

    def _forget(self, now: float) -> None:
        for key in [k for k, e in self.entries.items() if now - e.last > self.window]:
            del self.entries[key]

    def summary(self) -> list[dict[str, object]]:
        now = self.clock.monotonic()
        self._forget(now)
        return [
            {
                "sender": e.sender,
                "reason": e.reason,
                "error": e.error,
                "count": e.count,
                "since_s": round(now - e.first, 1),
                "last_age_s": round(now - e.last, 1),
            }
            for e in sorted(self.entries.values(), key=lambda e: (e.sender, e.reason))
        ]


REFUSALS = web.AppKey("heartbeat_refusals", HeartbeatRefusals)
