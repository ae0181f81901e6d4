"""A node without the internal secret refuses to listen beyond loopback.

Real node processes on --host 0.0.0.0: without TUNGGAL_INTERNAL_SECRET the
node exits non-zero with one line on stderr; with
TUNGGAL_NODE_ALLOW_UNPROTECTED_NETWORK=true it serves and logs the risk at
error level; with the secret it serves and turns strangers away.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import free_port
from tunggal.node.v1 import node_pb2_grpc as node_grpc
from tunggal.ops.v1 import ops_pb2 as ops_pb
from tunggal_tools.localcluster import wait_serving

pytestmark = pytest.mark.cluster  # starts real Tunggal processes

_SECRET_ENV = "TUNGGAL_INTERNAL_SECRET"
_ALLOW_ENV = "TUNGGAL_NODE_ALLOW_UNPROTECTED_NETWORK"


class _Node:
    """A node process on 0.0.0.0 with a given environment; stderr to a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.stderr_path = tmp_path / "stderr.log"
        base = {k: v for k, v in os.environ.items() if k not in (_SECRET_ENV, _ALLOW_ENV)}
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "matcher.server", "--host", "0.0.0.0",
                    "--port", str(self.port), "--data-dir", str(tmp_path / "data"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**base, **env},
            )  # fmt: skip

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self) -> _Node:
        wait_serving(self.address, 60, self.proc)
        return self

    def stats(self, metadata: tuple[tuple[str, str], ...] = ()) -> ops_pb.NodeStats:
        """The node's Stats, called on 127.0.0.1 with `metadata`."""
        with grpc.insecure_channel(self.address) as channel:
            stub = node_grpc.MatcherNodeStub(channel)
            return stub.Stats(ops_pb.StatsRequest(), timeout=10, metadata=metadata)

    def stderr_lines(self) -> list[str]:
        return self.stderr_path.read_text().splitlines()

    def log_events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stderr_lines() if line.startswith("{")]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


StartNode = Callable[[dict[str, str]], _Node]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[StartNode]:
    """start(env): a node process on 0.0.0.0 with `env`; every one is killed at the end."""
    nodes: list[_Node] = []

    def start_node(env: dict[str, str]) -> _Node:
        nodes.append(_Node(tmp_path, env))
        return nodes[-1]

    yield start_node
    for node in nodes:
        node.kill()


def test_without_the_secret_a_node_refuses_to_listen_beyond_loopback(start: StartNode) -> None:
    node = start({})
    assert node.proc.wait(timeout=60) == 1
    plain = [line for line in node.stderr_lines() if not line.startswith("{")]
    assert len(plain) == 1, plain
    assert plain[0].startswith("tunggal-node: error: refusing to listen on '0.0.0.0'")
    assert _SECRET_ENV in plain[0] and f"{_ALLOW_ENV}=true" in plain[0]
    refused = [e for e in node.log_events() if e["event"] == "node_refused_to_start"]
    assert [e["level"] for e in refused] == ["error"]


def test_the_loud_flag_lets_it_serve_and_logs_the_risk(start: StartNode) -> None:
    node = start({_ALLOW_ENV: "true"}).wait_serving()
    assert node.stats().serving
    warned = [e for e in node.log_events() if e["event"] == "node_unprotected_network"]
    assert [e["level"] for e in warned] == ["error"]
    assert "any caller on the network" in str(warned[0]["detail"])


def test_with_the_secret_it_serves_beyond_loopback_and_only_the_gateway(
    start: StartNode,
) -> None:
    node = start({_SECRET_ENV: "s3cret-for-this-test"}).wait_serving()
    with pytest.raises(grpc.RpcError) as denied:
        node.stats()
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert node.stats((("x-tunggal-internal", "s3cret-for-this-test"),)).serving
    assert not [e for e in node.log_events() if e["level"] == "error"]
