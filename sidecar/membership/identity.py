"""Who this sidecar is: stable node id (state DB or config), a fresh instance id per start,
and the heartbeat sequence counter."""

from __future__ import annotations

import itertools
import uuid

import attrs

from signet_cluster import __version__
from signet_cluster.daemon.probe import DaemonSnapshot
from signet_cluster.protocol import NodeInfo, ProtocolRange


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
