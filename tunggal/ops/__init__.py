"""Operators' service (tunggal.ops.v1.Operations): generated stubs under v1."""
