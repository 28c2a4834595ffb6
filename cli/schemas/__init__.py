"""JSON Schemas (draft 2020-12) of every `--json` document the CLI prints (package data)."""
