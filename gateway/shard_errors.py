"""A node's failed call as the error the gateway's caller should see.

A node's status that describes the request (INVALID_ARGUMENT, NOT_FOUND, ...)
is passed on unchanged; one that describes the node (UNAVAILABLE,
DEADLINE_EXCEEDED, anything else) is passed on with its code and a message
naming the shard. ``grpc-retry-pushback-ms`` trailers travel along.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from shard.shardmap import Node
from tunggal.errors import TunggalError

# Trailers of a node's error that the caller should see too.
FORWARDED_TRAILERS = ("grpc-retry-pushback-ms",)
# Node codes that describe the request, not the node: passed on unchanged.
REQUEST_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


def code_number(code: grpc.StatusCode) -> int:
    """The integer of a gRPC status code (what EnrollBatchItemResult.code holds)."""
    number: int = code.value[0]
    return number


class ShardError(TunggalError):
    """A node's failure, carried to the caller with the node's own status code."""

    def __init__(
        self,
        node: Node,
        code: grpc.StatusCode,
        message: str,
        trailers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.node = node
        self.code = code
        self.trailers = trailers


def shard_error(node: Node, exc: grpc.aio.AioRpcError) -> ShardError:
    """Turn a failed call to `node` into the error the caller should see."""
    code = exc.code()
    details = exc.details() or code.name.lower()
    if code in REQUEST_CODES:
        message = details
    elif code == grpc.StatusCode.UNAVAILABLE:
        message = f"shard {node} unavailable: {details}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"shard {node} did not answer in time: {details}"
    else:
        message = f"shard {node} failed ({code.name}): {details}"
    metadata: Any = exc.trailing_metadata() or ()  # grpc.aio.Metadata: (key, value) pairs
    trailers = tuple((str(key), str(value)) for key, value in metadata if key in FORWARDED_TRAILERS)
    return ShardError(node, code, message, trailers)
