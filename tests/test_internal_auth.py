"""Gateway-to-node shared secret: aio client interceptor, sync server interceptor."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.nodes import NodePool
from shard.shardmap import Node
from tunggal.internal_auth import (
    METADATA_KEY,
    InternalAuthClientInterceptor,
    InternalAuthServerInterceptor,
    internal_secret,
)
from tunggal.node.v1 import node_pb2_grpc as node_grpc
from tunggal.ops.v1 import ops_pb2 as ops_pb
from tunggal.settings import GatewaySettings

SECRET = "node-secret-0123456789abcdef"


class FakeNode(node_grpc.MatcherNodeServicer):
    def __init__(self) -> None:
        self.calls = 0

    def Stats(
        self, request: ops_pb.StatsRequest, context: grpc.ServicerContext
    ) -> ops_pb.NodeStats:
        self.calls += 1
        return ops_pb.NodeStats(name="node-0")


@pytest.fixture
def node() -> Iterator[tuple[int, FakeNode]]:
    servicer = FakeNode()  # type: ignore[abstract]  # base is not abstract at runtime
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[InternalAuthServerInterceptor(SECRET)],
    )
    node_grpc.add_MatcherNodeServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(None)


async def stats_code(port: int, *interceptors: Any, metadata: Any = ()) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", interceptors=list(interceptors) or None
    ) as channel:
        try:
            await node_grpc.MatcherNodeStub(channel).Stats(
                ops_pb.StatsRequest(), timeout=5, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


def test_only_callers_with_the_secret_get_through(node: tuple[int, FakeNode]) -> None:
    port, servicer = node

    async def scenario() -> None:
        assert await stats_code(port) == grpc.StatusCode.UNAUTHENTICATED
        wrong = InternalAuthClientInterceptor("not-the-secret")
        assert await stats_code(port, wrong) == grpc.StatusCode.UNAUTHENTICATED
        assert servicer.calls == 0
        right = InternalAuthClientInterceptor(SECRET)
        assert await stats_code(port, right) == grpc.StatusCode.OK
        # The interceptor replaces a forged value instead of sending two.
        forged = ((METADATA_KEY, "forged"),)
        assert await stats_code(port, right, metadata=forged) == grpc.StatusCode.OK
        assert servicer.calls == 2
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    asyncio.run(asyncio.wait_for(scenario(), timeout=15))


def test_secret_from_environment() -> None:
    assert internal_secret({"TUNGGAL_INTERNAL_SECRET": " abc "}) == "abc"
    assert internal_secret({"TUNGGAL_INTERNAL_SECRET": "  "}) is None
    assert internal_secret({}) is None
    with pytest.raises(ValueError, match="empty internal secret"):
        InternalAuthServerInterceptor("")
    with pytest.raises(ValueError, match="empty internal secret"):
        InternalAuthClientInterceptor("")


def test_the_gateway_sends_the_secret_of_its_settings(node: tuple[int, FakeNode]) -> None:
    port, servicer = node

    async def scenario() -> None:
        # Padded, as a Kubernetes Secret made from a file may hold it: sent stripped.
        settings = GatewaySettings(TUNGGAL_INTERNAL_SECRET=f" {SECRET}\n")
        pool = NodePool([Node("node-0", f"127.0.0.1:{port}")], settings)
        try:
            (client,) = pool
            row = await client.stub.Stats(ops_pb.StatsRequest(), timeout=5)
        finally:
            await pool.close()
        assert row.name == "node-0" and servicer.calls == 1

    asyncio.run(asyncio.wait_for(scenario(), timeout=15))
