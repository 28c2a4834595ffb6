"""The cluster API under /api/cluster/: heartbeats and status (cluster_api), operator
actions join/remove/adopt/promote (admin_api), and where agents live (routing_api).

May import: `signet_cluster` (not the dev daemon) and every sidecar package below it:
`membership`, `security`, `etcd`, `memory`, `federation`, `pipeline`.
"""
