"""Service unit templates rendered by `signet-cluster install-service` (package data)."""
