"""The signet-cluster command line."""
