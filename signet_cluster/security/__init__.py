"""Credentials: the cluster keyring, HMAC request signing with its replay cache, and TLS
(listener and client contexts, identities from certificates). Pure where it can be.

May import: the core top-level modules of `signet_cluster`.
"""
