"""Which matcher node owns a subject (rendezvous hashing), shared by gateway and tools."""
