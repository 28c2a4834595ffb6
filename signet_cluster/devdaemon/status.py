"""Payloads of ``/health``, ``/api/status``, ``/api/version`` and ``/api/features``.

Shapes follow the recordings (``GET_health.json``, ``GET_api_status__full.json``). The
daemon's full pipeline configuration (``pipelineV2``) is not modelled: only the flags a
sidecar might read and the guardrails that drive chunking and truncation.
"""

from __future__ import annotations

import os
import platform
import resource
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from signet_cluster.daemon.roster import load_manifest

from .config import CHUNK_TARGET_CHARS, MAX_CONTENT_CHARS, RECALL_TRUNCATE_CHARS
from .state import DaemonState


def listening_port(request: web.Request, state: DaemonState) -> int:
    """The port this request came in on (the configured one may be 0 = ephemeral)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return int(sockname[1])
    return state.config.port


def _resources() -> dict[str, int]:
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = 0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return {
        "total": fds,
        "memoryMd": 0,
        "sockets": 0,
        "inotify": 0,
        "pipes": 0,
        "db": 1,
        "other": max(fds - 1, 0),
        "rss": int(rss_mb),
        "heapUsed": 0,
    }


def health(state: DaemonState, port: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": "healthy",
        "uptime": round(state.uptime, 6),
        "pid": os.getpid(),
        "version": state.config.effective_version,
        "port": port,
        "agentsDir": str(state.config.path),
        "db": True,
    }
    if not state.config.is_legacy:
        body["shuttingDown"] = False
    body.update(updateAvailable=False, pendingRestart=False)
    if not state.config.is_legacy:
        body["pipeline"] = {
            "extractionRunning": False,
            "extractionStalled": False,
            "extractionPending": 0,
            "extractionBackoffMs": 0,
        }
        body["resources"] = _resources()
    return body


def _pipeline_config(state: DaemonState) -> dict[str, Any]:
    flavor = state.config.flavor
    config: dict[str, Any] = {"enabled": False}
    if not state.config.is_legacy:
        config["paused"] = False
    config.update(
        shadowMode=False,
        mutationsFrozen=False,
        guardrails={
            "maxContentChars": MAX_CONTENT_CHARS[flavor],
            "chunkTargetChars": CHUNK_TARGET_CHARS[flavor],
            "recallTruncateChars": RECALL_TRUNCATE_CHARS[flavor],
        },
    )
    return config


def _provider_resolution(legacy: bool) -> dict[str, Any]:
    extraction: dict[str, Any] = {"configured": "none", "resolved": "none", "effective": "none"}
    if not legacy:
        extraction.update(
            fallbackProvider="none",
            status="disabled",
            degraded=False,
            fallbackApplied=False,
            reason="No inference workload is configured for memoryExtraction",
            since=None,
        )
    return {
        "extraction": extraction,
        "synthesis": {"configured": None, "resolved": None, "effective": None},
    }


def manifest_agent_name(state: DaemonState) -> str | None:
    agent = load_manifest(state.config.path).get("agent")
    name = agent.get("name") if isinstance(agent, dict) else None
    return name if isinstance(name, str) and name else None


def status(state: DaemonState, port: int) -> dict[str, Any]:
    config = state.config
    logs = config.path / ".daemon" / "logs"
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    body: dict[str, Any] = {
        "status": "running",
        "version": config.effective_version,
        "pid": os.getpid(),
        "uptime": round(state.uptime, 6),
        "startedAt": state.started_at,
        "port": port,
        "host": config.host,
        "bindHost": config.host,
    }
    if not config.is_legacy:
        loopback = config.host in ("127.0.0.1", "localhost", "::1")
        body["networkMode"] = "localhost" if loopback else "tailscale"
        agent_id = (manifest_agent_name(state) if config.is_rust else None) or "default"
        body["agentId"] = agent_id
    body.update(agentsDir=str(config.path), memoryDb=True, pipelineV2=_pipeline_config(state))
    if not config.is_legacy:
        body["pipeline"] = {
            "extraction": {
                "running": False,
                "overloaded": False,
                "loadPerCpu": None,
                "maxLoadPerCpu": None,
                "overloadBackoffMs": None,
                "overloadSince": None,
                "nextTickInMs": None,
            }
        }
    body.update(
        providerResolution=_provider_resolution(config.is_legacy),
        logging={"logDir": str(logs), "logFile": str(logs / f"signet-{day}.log")},
        activeSessions=len(state.sessions.claims),
        bypassedSessions=0,
    )
    if not config.is_legacy:
        body["transcripts"] = {"capture": {"pending": 0, "failed": 0, "dead": 0, "processing": 0}}
    body.update(
        agentCreatedAt=None,
        health={"score": 1, "status": "healthy"},
        update={
            "currentVersion": config.effective_version,
            "latestVersion": None,
            "updateAvailable": False,
            "pendingRestart": None,
            "autoInstall": False,
            "checkInterval": 21600,
            "lastCheckAt": None,
            "lastError": None,
            "timerActive": False,
        },
        embedding={"provider": "none", "model": "nomic-embed-text-v1.5"},
    )
    if config.is_rust:
        body["db"] = _db_counts(state)
        body["agent"] = manifest_agent_name(state) or "default"
    return body


def _db_counts(state: DaemonState) -> dict[str, int]:
    store = state.store
    memories = store.one("SELECT COUNT(*) AS n FROM memories WHERE is_deleted = 0")
    entities = store.one("SELECT COUNT(*) AS n FROM entities")
    return {
        "memories": int(memories["n"]) if memories else 0,
        "entities": int(entities["n"]) if entities else 0,
        "embeddings": 0,
        "schemaVersion": 45,
    }


def version(state: DaemonState) -> dict[str, str]:
    """Rust-only ``/api/version``: the ``runtime`` field tells the runtimes apart."""
    return {
        "version": state.config.effective_version,
        "runtime": "rust",
        "target": platform.machine() or "x86_64",
    }


def features(state: DaemonState) -> dict[str, bool]:
    """``features:`` from agent.yaml as a flat map; Rust also reads "true"/"false"."""
    raw = load_manifest(state.config.path).get("features")
    flags: dict[str, bool] = {}
    if not isinstance(raw, dict):
        return flags
    for name, value in raw.items():
        if isinstance(value, bool):
            flags[str(name)] = value
        elif state.config.is_rust and value in ("true", "false"):
            flags[str(name)] = value == "true"
    return flags
