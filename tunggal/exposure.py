"""Refusing to serve an unprotected API beyond loopback.

A matcher node without the internal secret, or a gateway with tenant
authentication off, answers any caller. That is acceptable on 127.0.0.1
(tests, `tunggal local`) and nowhere else: such a process refuses to start
when it would listen on any other address, unless its operator sets the
process's loudly named ``..._ALLOW_UNPROTECTED_NETWORK`` setting, and then
it logs an error-level warning at every start.
"""

from __future__ import annotations

import ipaddress
import socket


class UnprotectedBindError(RuntimeError):
    """A process would serve an unprotected API on a non-loopback address."""


def is_loopback(host: str) -> bool:
    """True when `host` names only this machine (127.0.0.0/8, ::1, localhost).

    An empty host, ``0.0.0.0`` and ``::`` listen on every interface: not loopback.
    IPv6 may be bracketed (``[::1]``); an IPv4-mapped address (``::ffff:127.0.0.1``)
    counts as its IPv4 address. A name is resolved, and is loopback only if every
    address it has is; a name that does not resolve is not.
    """
    name = host.strip().removeprefix("[").removesuffix("]")
    if not name:
        return False
    try:
        return _is_loopback_address(name)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except (OSError, UnicodeError):  # unknown name; UnicodeError: not a valid name at all
        return False
    addresses = {str(info[4][0]) for info in infos}
    return bool(addresses) and all(_is_loopback_address(a) for a in addresses)


def _is_loopback_address(text: str) -> bool:
    """Whether the IP address `text` (IPv6 scope allowed) is a loopback address;
    ValueError when it is not an IP address."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_exposure(
    *, host: str, protected: bool, allow_unprotected: bool, what: str, remedy: str, flag: str
) -> bool:
    """Raise UnprotectedBindError when an unprotected API would listen beyond loopback.

    `what` names the missing protection (for the message), `remedy` says how to
    add it, `flag` names the setting that overrides the refusal. Returns True
    when the process serves unprotected beyond loopback because `flag` allowed
    it (the caller logs that loudly), False otherwise.
    """
    if protected or is_loopback(host):
        return False
    if allow_unprotected:
        return True
    where = repr(host) if host.strip() else "'' (every interface)"
    raise UnprotectedBindError(
        f"refusing to listen on {where} with {what}: any caller on the network would be "
        f"served. {remedy}, listen on 127.0.0.1, or (never in production) set {flag}=true"
    )
