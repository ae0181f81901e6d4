"""Server-edge helpers: turn domain errors into gRPC statuses, in one place.

Servicer methods raise `tunggal.errors.TunggalError` subclasses; these
decorators abort the call with the mapped status code and message. Anything
else becomes INTERNAL without leaking details to the caller, and is logged
with its traceback: frames without their locals, so the request's contents
stay out of the log (tunggal.logs).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
import structlog

from tunggal.errors import TunggalError, status_of

_log = structlog.get_logger("tunggal.rpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")


def sync_errors(
    method: Callable[[Self, Req, grpc.ServicerContext], Resp],
) -> Callable[[Self, Req, grpc.ServicerContext], Resp]:
    """Decorate a sync servicer method so domain errors abort with their status."""

    @functools.wraps(method)
    def wrapper(self: Self, request: Req, context: grpc.ServicerContext) -> Resp:
        try:
            return method(self, request, context)
        except TunggalError as exc:
            context.abort(exc.code, exc.message)
        except Exception as exc:
            _log.exception("unhandled_error", method=method.__name__)
            code, message = status_of(exc)
            context.abort(code, message)
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    return wrapper


def async_errors(
    method: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    """Decorate an async servicer method so domain errors abort with their status."""

    @functools.wraps(method)
    async def wrapper(
        self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Resp:
        try:
            return await method(self, request, context)
        except TunggalError as exc:
            await context.abort(exc.code, exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            _log.exception("unhandled_error", method=method.__name__)
            code, message = status_of(exc)
            await context.abort(code, message)
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    return wrapper
