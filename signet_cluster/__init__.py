"""signet-cluster core: the value types and rules every part of the product shares.

Top-level modules: protocol messages and their converter, settings, errors, clocks, the
registry and routing table, operator decisions (admin), the state DB, the write spool, the
merge of federated hits, circuit breakers, logging setup, and `explain`. Subpackages:
`security` (signing, keyring, TLS), `etcd` (the v3 JSON gateway client), `daemon` (the
Signet daemon adapter: flavor, roster, agent resolution, ownership, visibility, body
adaptation), and `devdaemon` (a stand-in daemon; a separate program).

May import: the standard library and third-party packages; within it, lower layers only
(core < security < etcd < daemon < explain < devdaemon, tests/test_layering.py). Never
`sidecar` or `cli`.
"""

__version__ = "0.1.0"
