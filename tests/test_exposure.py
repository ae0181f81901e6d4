"""An unprotected API listens on loopback only, unless its operator says otherwise."""

from __future__ import annotations

import pytest

from tunggal.exposure import UnprotectedBindError, check_exposure, is_loopback

FLAG = "TUNGGAL_NODE_ALLOW_UNPROTECTED_NETWORK"
WHAT = "internal authentication off (TUNGGAL_INTERNAL_SECRET is not set)"
REMEDY = "Set TUNGGAL_INTERNAL_SECRET"


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.2",  # all of 127.0.0.0/8
        " 127.0.0.1 ",
        "::1",
        "[::1]",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "localhost",  # resolved: 127.0.0.1 (and ::1 where the machine has it)
    ],
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    [
        "",  # every interface
        "   ",
        "0.0.0.0",
        "::",
        "[::]",
        "192.168.1.10",
        "10.0.0.5",
        "[fe80::1]",
        "::ffff:10.0.0.5",
        "a..b",  # not even a valid name: no resolver error escapes
        "[",
    ],
)
def test_hosts_beyond_loopback(host: str) -> None:
    assert not is_loopback(host)


def _check(host: str, *, protected: bool = False, allow: bool = False) -> bool:
    return check_exposure(
        host=host,
        protected=protected,
        allow_unprotected=allow,
        what=WHAT,
        remedy=REMEDY,
        flag=FLAG,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.10", "127.0.0.1"])
def test_a_protected_api_may_listen_anywhere(host: str) -> None:
    assert _check(host, protected=True) is False
    assert _check(host, protected=True, allow=True) is False


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "localhost"])
def test_an_unprotected_api_may_listen_on_loopback(host: str) -> None:
    assert _check(host) is False
    assert _check(host, allow=True) is False  # nothing to warn about


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "192.168.1.10"])
def test_an_unprotected_api_beyond_loopback_is_refused(host: str) -> None:
    with pytest.raises(UnprotectedBindError) as refused:
        _check(host)
    message = str(refused.value)
    assert f"refusing to listen on {host!r} with {WHAT}" in message
    assert REMEDY in message
    assert "listen on 127.0.0.1" in message
    assert f"{FLAG}=true" in message


def test_an_empty_host_is_named_as_every_interface() -> None:
    with pytest.raises(UnprotectedBindError, match=r"listen on '' \(every interface\) with"):
        _check("")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10"])
def test_the_flag_lets_an_unprotected_api_listen_beyond_loopback(host: str) -> None:
    assert _check(host, allow=True) is True
