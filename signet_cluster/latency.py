"""What a federated read waits for each node: a budget learned from the node's recent
contribution latencies (a high percentile times a headroom factor, plus a grace), capped by
a ceiling setting. Before a node has answered often enough to learn from, it gets the
ceiling, so a first call on a cold connection or a cold daemon is never cut short.

Pure bookkeeping: the caller measures and passes seconds; no clock is read here.
"""

from __future__ import annotations

import math
from collections import deque

import attrs

WINDOW = 200  # latencies kept per node: about the last few seconds of a busy sidecar
MIN_SAMPLES = 5  # fewer than this and the node's latency is not known yet
PERCENTILE = 0.99


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@attrs.define
class Latencies:
    window: int = WINDOW
    nodes: dict[str, deque[float]] = attrs.Factory(dict)

    def observe(self, node_id: str, seconds: float) -> None:
        samples = self.nodes.get(node_id)
        if samples is None:
            samples = self.nodes[node_id] = deque(maxlen=self.window)
        samples.append(max(0.0, seconds))

    def high(self, node_id: str) -> float | None:
        """The node's recent p99 latency in seconds; None while too few are known."""
        samples = self.nodes.get(node_id)
        if samples is None or len(samples) < MIN_SAMPLES:
            return None
        return percentile(list(samples), PERCENTILE)

    def budget(self, node_id: str, *, ceiling: float, headroom: float, grace: float) -> float:
        """Seconds a read waits for this node (before the owner's own time is considered)."""
        high = self.high(node_id)
        if high is None:
            return ceiling
        return min(ceiling, high * headroom + grace)

    def forget(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)
