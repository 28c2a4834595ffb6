"""Typed application keys: the only way sidecar state is shared between handlers and loops."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from signet_cluster.clock import Clock
from signet_cluster.registry import Registry
from signet_cluster.settings import Settings
from signet_cluster.state import StateStore

if TYPE_CHECKING:
    from .auth import AuthState
    from .identity import NodeIdentity
    from .membership import Membership
    from .metrics import Metrics
    from .peers import PeerClient
    from .proxy import ProxyState
    from .watcher import DaemonWatcher

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
# The memory API and federation (sidecar/proxy.py).
PROXY: web.AppKey[ProxyState] = web.AppKey("proxy")
