"""Per-node circuit breakers for fan-out: a node that fails `threshold` times in a row is
skipped for `cooldown` seconds; then one request probes it (the others keep skipping it)
and its result closes the breaker or opens it again. Times come from the caller's
monotonic clock, so tests drive it with a ManualClock.
"""

from __future__ import annotations

import attrs


@attrs.define
class Breaker:
    failures: int = 0
    open_until: float | None = None
    probing: bool = False


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
            return f"skipped for {left:.1f}s more after {breaker.failures} failures in a row"
        if breaker.probing:
            return "skipped while another request probes it"
        breaker.probing = True
        return None

    def record(self, node_id: str, ok: bool, now: float) -> None:
        breaker = self.nodes.setdefault(node_id, Breaker())
        breaker.probing = False
        if ok:
            breaker.failures, breaker.open_until = 0, None
            return
        breaker.failures += 1
        if breaker.failures >= self.threshold:
            breaker.open_until = now + self.cooldown

    def state(self, node_id: str, now: float) -> str:
        breaker = self.nodes.get(node_id)
        if breaker is None or breaker.open_until is None:
            return "closed"
        return "open" if now < breaker.open_until else "half-open"
