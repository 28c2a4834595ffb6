"""An asyncio client for etcd's v3 JSON gateway (client) and its wire types (wire).

May import: the core top-level modules of `signet_cluster`, `signet_cluster.security`.
"""
