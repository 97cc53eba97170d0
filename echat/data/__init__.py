"""Data formats of echat: raw JSON-lines manifests, shard tars, and their checker."""
