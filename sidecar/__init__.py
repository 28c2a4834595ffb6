"""The signet-cluster sidecar: an aiohttp service next to one Signet daemon."""
