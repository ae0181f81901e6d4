"""The matcher node: one shard's gallery (matcher.gallery) served over gRPC (matcher.server)."""
