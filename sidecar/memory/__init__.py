"""The daemon's memory API on the sidecar: the mechanisms each request step uses.

Owns the routing decision for an agent (routing), serving on the local daemon with the body
adapted to its flavor (proxy), relaying to the daemon (forward, and h1client on the hot
path), relaying to an owner's sidecar, ownership checks of modify/forget (owner_checks),
Rust write sessions, hinted handoff (spooling writes for an unreachable owner), and the
pass-through of every other daemon path.

May import: `signet_cluster` core and `signet_cluster.daemon`, `sidecar.membership`,
`sidecar.security`, the sidecar's top-level modules.
"""
