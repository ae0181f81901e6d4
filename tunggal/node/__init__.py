"""The nodes' internal service (tunggal.node.v1.MatcherNode): generated stubs under v1."""
