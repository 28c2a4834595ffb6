"""The Signet daemon adapter: everything that knows how a daemon behaves.

Owns reading a daemon (probe: flavor, version, health, roster; roster: agent.yaml and agent
folders), which agent a request acts as (agent_resolution), which agent owns a memory
(ownership: the daemon's DB, read-only), what another node's reader may see (visibility),
one client body for every flavor (adapt), and the cluster's roster in the daemon's
`/api/agents` shape (cluster_roster).

May import: the core top-level modules of `signet_cluster`, `signet_cluster.security`.
"""
