"""Who this sidecar is: stable node id (config, else state DB, else the host name), a fresh
instance id per start, and the heartbeat sequence counter."""

from __future__ import annotations

import itertools
import re
import socket
import uuid

import attrs

from signet_cluster import __version__
from signet_cluster.daemon.probe import DaemonSnapshot
from signet_cluster.protocol import NodeInfo, ProtocolRange


def default_node_id(hostname: str | None = None) -> str:
    """The id a new node takes when none is configured: its short host name, made a valid
    node id. A host keeps its id across a new state dir (foreground `serve` vs the unit),
    so a restart never turns it into a second node; two hosts with one name are refused by
    the coordinator (409 node_id_in_use) and must set `node_id`. Falls back to a random id
    when the host has no usable name."""
    name = (hostname if hostname is not None else socket.gethostname()).split(".", 1)[0]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip().lower()).strip("-._")[:64]
    if not cleaned or cleaned in ("localhost", "localhost-localdomain"):
        return "node-" + uuid.uuid4().hex[:12]
    return cleaned


@attrs.define(kw_only=True)
class NodeIdentity:
    node_id: str
    url: str
    coordinator: bool
    instance_id: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    sidecar_version: str = __version__
    # The protocol range this sidecar speaks (tests narrow it to simulate other releases).
    protocol: ProtocolRange = attrs.field(factory=ProtocolRange.ours)
    _seq: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), alias="_seq")

    def next_seq(self) -> int:
        return next(self._seq)

    def info(self, daemon: DaemonSnapshot) -> NodeInfo:
        return NodeInfo(
            node_id=self.node_id,
            url=self.url,
            sidecar_version=self.sidecar_version,
            protocol=self.protocol,
            coordinator=self.coordinator,
            daemon=daemon.info(),
        )
