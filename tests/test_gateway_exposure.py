"""A gateway with authentication off never serves beyond loopback by accident (issue 12, defect 1).

Real gateway processes listening on 0.0.0.0: with ``--no-auth`` (or
``TUNGGAL_GATEWAY_AUTH=off``) one refuses to start, with one line on stderr,
unless ``TUNGGAL_GATEWAY_ALLOW_UNPROTECTED_NETWORK=true``, and then it serves
and logs the risk at error level; with authentication on it serves.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import ROOT, free_port, gateway_process, run_to_exit, terminate
from tunggal.client import TunggalClient

pytestmark = pytest.mark.cluster  # starts real Tunggal processes

DEMO_TENANTS = ROOT / "deploy" / "tenants.demo.toml"
ALLOW = "TUNGGAL_GATEWAY_ALLOW_UNPROTECTED_NETWORK"
RISK_EVENT = "gateway_unprotected_network"


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without gateway settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNGGAL_GATEWAY_")}
    return {**env, **extra}


def argv(port: int, *extra: str) -> list[str]:
    """A gateway on every interface, its one node down, /metrics off."""
    return [
        sys.executable, "-m", "gateway.server", "--host", "0.0.0.0", "--port", str(port),
        "--metrics-port", "0", "--nodes", f"node-0=127.0.0.1:{free_port()}", *extra,
    ]  # fmt: skip


def log_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def serve_then_stop(
    tmp_path: Path, args: list[str], env: dict[str, str], *, auth: bool
) -> list[dict[str, Any]]:
    """Start a gateway, call Stats on it without a key through 127.0.0.1, stop it; its log events.

    With `auth` the call is UNAUTHENTICATED; without, it answers a row for the node (down).
    """
    port = int(args[args.index("--port") + 1])
    log = tmp_path / "gateway.log"
    with gateway_process(args, port, log, env) as proc:
        with TunggalClient(f"127.0.0.1:{port}", timeout=10) as anonymous:
            if auth:
                with pytest.raises(grpc.RpcError) as refused:
                    anonymous.stats()
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            else:
                (row,) = anonymous.stats()
                assert row.name == "node-0" and row.error  # the node is down
        assert terminate(proc, 20) == 0
    return log_events(log)


@pytest.mark.parametrize(
    ("flags", "env"),
    [(["--no-auth"], {}), ([], {"TUNGGAL_GATEWAY_AUTH": "off"})],
    ids=["--no-auth", "TUNGGAL_GATEWAY_AUTH=off"],
)
def test_auth_off_beyond_loopback_is_refused(flags: list[str], env: dict[str, str]) -> None:
    # A gateway that serves instead never exits: TimeoutExpired.
    result = run_to_exit(argv(free_port(), *flags), environment(**env), timeout=30)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    plain = [line for line in lines if not line.startswith("{")]
    assert len(plain) == 1, result.stderr  # one line for a person, beside the JSON log
    assert plain[0].startswith("tunggal-gateway: error: ")
    assert "refusing to listen on '0.0.0.0' with authentication off" in plain[0]
    assert f"{ALLOW}=true" in plain[0] and "--tenants" in plain[0]
    (logged,) = [json.loads(line) for line in lines if line.startswith("{")]
    assert logged["event"] == "gateway_start_failed" and logged["level"] == "error"


def test_auth_off_beyond_loopback_serves_when_allowed_and_says_so(tmp_path: Path) -> None:
    events = serve_then_stop(
        tmp_path, argv(free_port(), "--no-auth"), environment(**{ALLOW: "true"}), auth=False
    )
    (risk,) = [e for e in events if e.get("event") == RISK_EVENT]
    assert risk["level"] == "error" and risk["host"] == "0.0.0.0"
    assert "any caller" in risk["detail"]


def test_auth_on_serves_beyond_loopback(tmp_path: Path) -> None:
    events = serve_then_stop(
        tmp_path, argv(free_port(), "--tenants", str(DEMO_TENANTS)), environment(), auth=True
    )
    assert any(e.get("event") == "gateway_started" for e in events)
    assert not any(e.get("event") == RISK_EVENT for e in events)
