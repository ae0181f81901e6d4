"""Tunggal's shared core and client library.

Errors, validation, settings, logging, rpc helpers and the generated stubs. It
imports none of gateway, matcher, shard or tunggal_tools.
"""
