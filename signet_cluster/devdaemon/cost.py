"""The recall-cost knob: makes the dev daemon's recall cost what a real daemon's does, so
benchmarks and load tests on dev daemons see real latency and CPU contention.

A cost is CPU per call and per returned row (spent on the event loop, as the real daemon's
single JavaScript thread spends it: concurrent requests queue behind it), a fixed latency
off the CPU, and the real response's size (0.145.7 lists 15 timing stages in
`meta.timings.stages`). `real` is 0.145.7 as measured by `bench/recall_cost.py` on a
2-core machine, keyword recall with embeddings off (README, "Dev daemon recall cost").
"""

from __future__ import annotations

import time
from typing import Any

import attrs

# The stages 0.145.7 reports for a keyword recall, in its order.
REAL_STAGES = (
    "memory_fts",
    "query_embedding_total",
    "query_embedding_wait",
    "flat_score_merge",
    "authorize_candidates",
    "structured_evidence",
    "rehearsal_boost",
    "dampening",
    "currentness",
    "final_rank",
    "hydrate_memory_rows",
    "assemble_results",
    "source_chunk_vector_supplement",
    "native_artifact_supplement",
    "access_tracking_update",
)


@attrs.frozen(kw_only=True)
class RecallCost:
    cpu_ms_per_call: float = 0.0
    cpu_ms_per_row: float = 0.0
    latency_ms: float = 0.0
    real_stages: bool = False

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


# Measured on the real 0.145.7 (bench/recall_cost.py): least squares over limits 1-50.
REAL = RecallCost(cpu_ms_per_call=3.5, cpu_ms_per_row=0.046, latency_ms=0.0, real_stages=True)
PRESETS: dict[str, RecallCost | None] = {"off": None, "real": REAL}


def parse_cost(value: object) -> RecallCost | None:
    """`"off"`, `"real"` or `{cpu_ms_per_call?, cpu_ms_per_row?, latency_ms?, real_stages?}`;
    raises ValueError with a readable message otherwise."""
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(f"recall_cost must be one of {', '.join(PRESETS)} or an object")
        return PRESETS[value]
    if not isinstance(value, dict):
        raise ValueError("recall_cost must be off, real or an object")
    unknown = set(value) - {f.name for f in attrs.fields(RecallCost)}
    if unknown:
        raise ValueError(f"recall_cost: unknown fields {', '.join(sorted(unknown))}")
    numbers: dict[str, float] = {}
    for name in ("cpu_ms_per_call", "cpu_ms_per_row", "latency_ms"):
        number = value.get(name, 0.0)
        if (
            isinstance(number, bool)
            or not isinstance(number, int | float)
            or not 0 <= number < 10_000
        ):
            raise ValueError(f"recall_cost.{name} must be a number from 0 to 10000")
        numbers[name] = float(number)
    stages = value.get("real_stages", False)
    if not isinstance(stages, bool):
        raise ValueError("recall_cost.real_stages must be true or false")
    return RecallCost(real_stages=stages, **numbers)


def spend(cost: RecallCost, rows: int, since_cpu: float) -> None:
    """Busy the event loop until this request's CPU time (thread time since `since_cpu`,
    which includes the dev daemon's own work) reaches the cost of `rows` rows."""
    target = (cost.cpu_ms_per_call + cost.cpu_ms_per_row * rows) / 1000
    while time.thread_time() - since_cpu < target:
        pass


def real_stages(total_ms: float) -> list[dict[str, Any]]:
    share = round(total_ms / len(REAL_STAGES), 2)
    return [{"name": name, "durationMs": share} for name in REAL_STAGES]
