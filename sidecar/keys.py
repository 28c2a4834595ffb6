"""Typed application keys: the only way sidecar state is shared between handlers and loops."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from signet_cluster.clock import Clock
from signet_cluster.protocol import SpoolSummary
from signet_cluster.registry import Registry
from signet_cluster.settings import Settings
from signet_cluster.state import StateStore

if TYPE_CHECKING:
    from sidecar.federation.health import FederationState
    from sidecar.membership.identity import NodeIdentity
    from sidecar.membership.peers import PeerClient
    from sidecar.membership.view import Membership
    from sidecar.membership.watcher import DaemonWatcher
    from sidecar.memory.proxy import ProxyState
    from sidecar.ops.metrics import Metrics
    from sidecar.security.auth import AuthState

SETTINGS = web.AppKey("settings", Settings)
CLOCK = web.AppKey("clock", Clock)
HTTP = web.AppKey("http", aiohttp.ClientSession)
STATE = web.AppKey("state", StateStore)
REGISTRY = web.AppKey("registry", Registry)
# Sidecar classes are declared by annotation only: their modules import this one.
IDENTITY: web.AppKey[NodeIdentity] = web.AppKey("identity")
MEMBERSHIP: web.AppKey[Membership] = web.AppKey("membership")
WATCHER: web.AppKey[DaemonWatcher] = web.AppKey("watcher")
PEERS: web.AppKey[PeerClient] = web.AppKey("peers")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
AUTH: web.AppKey[AuthState] = web.AppKey("auth")
# The memory API and federation (sidecar/memory/proxy.py).
PROXY: web.AppKey[ProxyState] = web.AppKey("proxy")
# Contributor breakers, learned latencies, background legs (sidecar/federation/health.py).
FEDERATION: web.AppKey[FederationState] = web.AppKey("federation")
# The spool as the last heartbeat should describe it (refreshed by sidecar.memory.handoff
# after every change; read by the heartbeat and status without depending on the spool).
SPOOL_SUMMARY = web.AppKey("spool_summary", list[SpoolSummary])


def current_summary(app: web.Application) -> SpoolSummary | None:
    holder = app.get(SPOOL_SUMMARY)
    return holder[0] if holder else None
