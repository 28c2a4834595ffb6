"""Security: who may call this sidecar, and how much a caller can make it hold.

Owns the auth middleware (signed requests, mTLS identities, loopback and token rules, the
peer-address policy) and the limits on headers, bodies and slow clients.

May import: `signet_cluster` core and `signet_cluster.security`, `sidecar.membership`
(PeerClient's header names), the sidecar's top-level modules.
"""
