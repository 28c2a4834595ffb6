"""The /cluster topology page's files (package data, served by sidecar.ops.topology)."""
