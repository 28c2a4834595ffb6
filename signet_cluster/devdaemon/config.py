"""Configuration of the dev daemon and what each flavor of the real daemon does differently."""

from __future__ import annotations

from pathlib import Path

import attrs

FLAVORS = ("ts", "ts-legacy", "rust")
FAIL_MODES = ("none", "error", "hang")

#: Release each flavor reports when no version is given (the recorded ones, and the Rust
#: workspace version that tracks the TS release).
DEFAULT_VERSIONS = {"ts": "0.145.7", "ts-legacy": "0.58.1", "rust": "0.145.7"}

#: Content longer than this is auto-chunked (``guardrails.maxContentChars``): TS 0.145.7
#: defaults to 800, 0.58.1 to 500, Rust only splits above 10 000 characters.
MAX_CONTENT_CHARS = {"ts": 800, "ts-legacy": 500, "rust": 10_000}
CHUNK_TARGET_CHARS = {"ts": 600, "ts-legacy": 300, "rust": 2_000}
#: Recall cuts content to this many characters (``recallTruncateChars``).
RECALL_TRUNCATE_CHARS = {"ts": 500, "ts-legacy": 500, "rust": 50_000}


def _check_flavor(_inst: object, _attr: object, value: str) -> None:
    if value not in FLAVORS:
        raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}, not {value!r}")


def _check_fail(_inst: object, _attr: object, value: str) -> None:
    if value not in FAIL_MODES:
        raise ValueError(f"fail must be one of {', '.join(FAIL_MODES)}, not {value!r}")


def _check_latency(_inst: object, _attr: object, value: float) -> None:
    if value < 0:
        raise ValueError("latency_ms must be >= 0")


@attrs.frozen(kw_only=True)
class DevDaemonConfig:
    """How to run one dev daemon."""

    path: Path = attrs.field(converter=Path)  # the workspace (SIGNET_PATH)
    flavor: str = attrs.field(default="ts", validator=_check_flavor)
    host: str = "127.0.0.1"
    port: int = 3850
    version: str | None = None
    latency_ms: float = attrs.field(default=0.0, validator=_check_latency)
    fail: str = attrs.field(default="none", validator=_check_fail)
    recall_cost: str = attrs.field(
        default="off", validator=attrs.validators.in_(("off", "real"))
    )  # devdaemon/cost.py presets

    @property
    def effective_version(self) -> str:
        return self.version or DEFAULT_VERSIONS[self.flavor]

    @property
    def has_agents(self) -> bool:
        """Multi-agent daemon (migration 043): agents table, agent_id and visibility."""
        return self.flavor != "ts-legacy"

    @property
    def is_rust(self) -> bool:
        return self.flavor == "rust"

    @property
    def is_legacy(self) -> bool:
        return self.flavor == "ts-legacy"

    @property
    def db_path(self) -> Path:
        return self.path / "memory" / "memories.db"
