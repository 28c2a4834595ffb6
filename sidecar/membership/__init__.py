"""Membership: who this node is and who else is in the cluster.

Owns the node's identity, the reading of the local daemon (watcher), the heartbeat loop, the
coordinator role (accepting heartbeats into the registry), the member's copy of the registry
(view), failsafe routing while no coordinator answers, replication of operator decisions
between coordinators (admin_sync), and PeerClient, the one way to call another sidecar.

May import: `signet_cluster` core, `signet_cluster.security`, `signet_cluster.daemon`, and
the sidecar's top-level `keys`, `bodies`, `middlewares`.
"""
