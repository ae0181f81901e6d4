"""Benchmarks of a Tunggal cluster: `python -m bench.<name> --help`; runs go to docs/benchmarks/."""
