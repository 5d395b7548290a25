"""Pieces shared by the dispatcher and the shards: record type, registry schema, backoff."""
