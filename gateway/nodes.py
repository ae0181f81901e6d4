"""Long-lived gRPC channels from the gateway to every matcher node.

One `grpc.aio` channel (and one `MatcherNode` stub, and one
`gateway.batching.SearchBatcher` for Identify's searches) per node, opened
at start and shared by every call: HTTP/2 keepalive pings detect a dead node between
calls, and a short reconnect backoff brings a restarted node back within
seconds. Channels must be made inside the running event loop.

With a shared secret (``settings.internal_secret``, env
``TUNGGAL_INTERNAL_SECRET``, `tunggal.internal_auth`) every call carries it,
so nodes that require it accept the gateway only.

The nodes' servers must accept these pings, i.e. set
``grpc.keepalive_permit_without_calls=1`` and
``grpc.http2.min_recv_ping_interval_without_data_ms`` at most
``keepalive_s * 1000`` (see `tunggal.settings.server_keepalive_options`), or
they answer with GOAWAY "too_many_pings".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from gateway.batching import SearchBatcher
from shard.shardmap import Node
from tunggal.internal_auth import InternalAuthClientInterceptor
from tunggal.node.v1 import node_pb2_grpc as node_grpc
from tunggal.settings import GatewaySettings, grpc_message_options

_KEEPALIVE_TIMEOUT_MS = 10_000
_RECONNECT_MIN_MS = 200
_RECONNECT_MAX_MS = 2_000


def channel_options(settings: GatewaySettings) -> list[tuple[str, int]]:
    """Options of a gateway-to-node channel: message limits, keepalive, backoff."""
    keepalive_ms = max(1, int(settings.keepalive_s * 1000))
    return [
        *grpc_message_options(settings.max_message_bytes),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", min(_KEEPALIVE_TIMEOUT_MS, keepalive_ms)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", _RECONNECT_MIN_MS),
        ("grpc.min_reconnect_backoff_ms", _RECONNECT_MIN_MS),
        ("grpc.max_reconnect_backoff_ms", _RECONNECT_MAX_MS),
    ]


@dataclass(frozen=True)
class NodeClient:
    """A node with its open channel, async stub and search batcher."""

    node: Node
    channel: grpc.aio.Channel
    stub: node_grpc.MatcherNodeAsyncStub
    searches: SearchBatcher


class NodePool:
    """The gateway's channels to every node, keyed by node name.

    ``settings.internal_secret`` (if set) is sent on every call as ``x-tunggal-internal``.
    """

    def __init__(self, nodes: Iterable[Node], settings: GatewaySettings) -> None:
        options = channel_options(settings)
        secret = settings.internal_secret_value()
        # grpc-stubs types aio channel interceptors as a placeholder: Any.
        interceptors: Any = [InternalAuthClientInterceptor(secret)] if secret else None
        self._clients: dict[str, NodeClient] = {}
        for node in nodes:
            channel = grpc.aio.insecure_channel(
                node.address, options=options, interceptors=interceptors
            )
            stub = node_grpc.MatcherNodeStub(channel)
            searches = SearchBatcher(
                node, stub, settings.search_batch, settings.search_batches_in_flight
            )
            self._clients[node.name] = NodeClient(node, channel, stub, searches)

    def __getitem__(self, node: Node) -> NodeClient:
        return self._clients[node.name]

    def __iter__(self) -> Iterator[NodeClient]:
        return iter(self._clients.values())

    def __len__(self) -> int:
        return len(self._clients)

    def connect(self) -> None:
        """Start connecting every channel now rather than on its first call."""
        for client in self._clients.values():
            client.channel.get_state(try_to_connect=True)

    def connectivity(self) -> dict[str, grpc.ChannelConnectivity]:
        """Each node's channel state (does not try to connect)."""
        return {name: c.channel.get_state() for name, c in self._clients.items()}

    async def close(self, grace: float | None = None) -> None:
        """Close every channel (in-flight calls get `grace` seconds)."""
        for client in self._clients.values():
            await client.channel.close(grace)
