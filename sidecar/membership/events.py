"""Recent cluster events a coordinator saw (a node went down or came back, a collision, a
removal, a replacement), newest last, for the /cluster page and `status --json`. Bounded and
in memory: the log keeps the full history."""

from __future__ import annotations

from collections import deque

import attrs
from aiohttp import web

from signet_cluster.clock import Clock

KEEP = 50


@attrs.define
class RecentEvents:
    clock: Clock
    entries: deque[dict[str, object]] = attrs.field(factory=lambda: deque(maxlen=KEEP))

    def record(self, kind: str, text: str, node_id: str | None = None) -> None:
        self.entries.append(
            {"at": round(self.clock.time(), 3), "kind": kind, "node_id": node_id, "text": text}
        )

    def recent(self) -> list[dict[str, object]]:
        return list(self.entries)


RECENT_EVENTS = web.AppKey("recent_events", RecentEvents)
