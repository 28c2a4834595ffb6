"""signet-cluster core: protocol, registry, routing, daemon adapters and the dev daemon."""

__version__ = "0.1.0"
