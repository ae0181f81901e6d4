"""Tunggal's gateway: the public gRPC service that fans calls out to the matcher nodes."""
