"""Per-node circuit breakers for fan-out. They open on failures, never on slowness: an
error answer, a refused or reset connection, or no answer at all within the ceiling (a
timeout well past anything the node's learned latency allows). A healthy node that answers
later than a read could wait is not a failure: its answer still arrives, and its latency is
learned (`signet_cluster.latency`).

A node that fails `threshold` times in a row is skipped for `cooldown` seconds; then one
request probes it (the others keep skipping it) and its result closes the breaker or opens
it again. Times come from the caller's monotonic clock, so tests drive it with a ManualClock.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.define
class Breaker:
    failures: int = 0
    open_until: float | None = None
    probing: bool = False
    last_error: str | None = None
    opened: int = 0  # times this breaker has opened (status, metrics)


@attrs.define
class Breakers:
    threshold: int = 3
    cooldown: float = 5.0
    nodes: dict[str, Breaker] = attrs.Factory(dict)

    def admit(self, node_id: str, now: float) -> str | None:
        """None when the node may be asked now; else why it is skipped."""
        breaker = self.nodes.get(node_id)
        if breaker is None or breaker.open_until is None:
            return None
        if now < breaker.open_until:
            left = breaker.open_until - now
            return (
                f"circuit breaker open for {left:.1f}s more after {breaker.failures} failures "
                f"in a row (last: {breaker.last_error})"
            )
        if breaker.probing:
            return "circuit breaker half-open: another request is probing the node"
        breaker.probing = True
        return None

    def record(self, node_id: str, ok: bool, now: float, error: str | None = None) -> None:
        breaker = self.nodes.setdefault(node_id, Breaker())
        breaker.probing = False
        if ok:
            breaker.failures, breaker.open_until = 0, None
            return
        breaker.failures += 1
        breaker.last_error = error
        if breaker.failures >= self.threshold:
            if breaker.open_until is None or now >= breaker.open_until:
                breaker.opened += 1
            breaker.open_until = now + self.cooldown

    def state(self, node_id: str, now: float) -> str:
        breaker = self.nodes.get(node_id)
        if breaker is None or breaker.open_until is None:
            return "closed"
        return "open" if now < breaker.open_until else "half-open"

    def summary(self, node_id: str, now: float) -> dict[str, Any]:
        breaker = self.nodes.get(node_id, Breaker())
        return {
            "breaker": self.state(node_id, now),
            "failures_in_a_row": breaker.failures,
            "last_error": breaker.last_error,
            "opened": breaker.opened,
        }
