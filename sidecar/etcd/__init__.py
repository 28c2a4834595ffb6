"""The etcd registry backend (`registry_backend = "etcd"`).

Owns the key layout and local copy of etcd's keys (view), the backend loop that replaces the
coordinator heartbeat (leases, claims by compare-and-swap, watches), and the operator actions
that write to etcd (admin).

May import: `signet_cluster` core, `signet_cluster.etcd`, `signet_cluster.daemon`,
`sidecar.membership`, `sidecar.security`, the sidecar's top-level modules.
"""
