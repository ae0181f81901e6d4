"""Domain errors and their one mapping to gRPC status codes.

Every layer raises these; only the servers' edges (`abort_with`) turn them
into statuses, so a caller always gets the same code for the same fault.
"""

from __future__ import annotations

import grpc


class TunggalError(Exception):
    """Base of every error a caller should see as a gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(TunggalError):
    """The request is malformed; retrying it unchanged cannot succeed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(TunggalError):
    """The named subject does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(TunggalError):
    """The request conflicts with stored state (e.g. a reused request_id)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(TunggalError):
    """The service cannot answer now (loading, shutting down, shard down)."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(TunggalError):
    """A limit was hit (quota, capacity, size)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(TunggalError):
    """The call's deadline passed before an answer was ready."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(TunggalError):
    """No valid credentials were presented."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TunggalError):
    """The caller is known but may not call this method."""

    code = grpc.StatusCode.PERMISSION_DENIED


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a caller should see for `exc`."""
    if isinstance(exc, TunggalError):
        return exc.code, exc.message
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
