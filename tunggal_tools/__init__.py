"""Tunggal's tools, above the services: the ``tunggal`` command line, the local
cluster of real processes, the demo gallery, the load generator and the
accuracy report. Nothing in `tunggal` (the shared core), `matcher` or `gateway`
imports from here."""
