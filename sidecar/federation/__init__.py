"""Federation: reads that span the cluster (recall and search), by the reader's policy.

Owns the fan-out (fanout: the owner's leg and every contributing node, merged), the legs
(legs: parallel calls with their learned deadlines and breakers, tagging hits), what this
node knows of the others as contributors (health: breakers, latencies, warm connections),
and the contributor's side (contribute: `POST /api/cluster/contribute`, what this node may
show another's reader).

May import: `signet_cluster` core and `signet_cluster.daemon`, `sidecar.membership`,
`sidecar.security`, `sidecar.memory`, the sidecar's top-level modules.
"""
