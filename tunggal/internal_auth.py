"""Gateway-to-node authentication with a shared secret.

The gateway's channels to the matcher nodes carry the metadata
``x-tunggal-internal: <secret>`` (`InternalAuthClientInterceptor`, grpc.aio);
each node's sync ``grpc.server`` rejects any other caller with
UNAUTHENTICATED (`InternalAuthServerInterceptor`). Health and reflection stay
open. The services take the secret from their settings
(``settings.internal_secret``, `tunggal.settings.MatchingSettings`, env
``TUNGGAL_INTERNAL_SECRET``: the same value on the gateway and every node);
`internal_secret` reads the same variable for the command-line tools. It is
compared in constant time. It is a guard against stray callers on a private
network, not a substitute for TLS on an untrusted one.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio

if TYPE_CHECKING:
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
    _UnaryUnaryClient = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStreamClient = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor
    _UnaryUnaryClient = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStreamClient = grpc.aio.UnaryStreamClientInterceptor

SECRET_ENV: Final = "TUNGGAL_INTERNAL_SECRET"  # noqa: S105  a variable's name, not a secret
METADATA_KEY: Final = "x-tunggal-internal"
OPEN_SERVICES: Final = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


def internal_secret(environ: Mapping[str, str] | None = None) -> str | None:
    """The shared secret from ``TUNGGAL_INTERNAL_SECRET`` (stripped); None when unset or blank.

    For the command-line tools; a service reads ``settings.internal_secret``.
    """
    value = (os.environ if environ is None else environ).get(SECRET_ENV, "").strip()
    return value or None


def _with_secret(details: grpc.aio.ClientCallDetails, secret: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(
        *((k, v) for k, v in (details.metadata or ()) if k != METADATA_KEY)
    )
    metadata.add(METADATA_KEY, secret)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class InternalAuthClientInterceptor(_UnaryUnaryClient, _UnaryStreamClient):
    """Adds the shared secret to every call on a grpc.aio channel to a node."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("empty internal secret")
        self._secret = secret

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Send the unary call with the secret in its metadata."""
        return await continuation(_with_secret(client_call_details, self._secret), request)

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Send the server-streaming call with the secret in its metadata."""
        return await continuation(_with_secret(client_call_details, self._secret), request)


def _deny(_request: Any, context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "internal API: gateway credentials required")


_DENY: Final = grpc.unary_unary_rpc_method_handler(_deny)


class InternalAuthServerInterceptor(_ServerInterceptor):
    """Rejects callers of a sync node server that lack the shared secret."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("empty internal secret")
        self._secret = secret.encode("utf-8")

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Continue a call that carries the secret (or is to health/reflection); deny the rest."""
        service = handler_call_details.method.lstrip("/").partition("/")[0]
        if service in OPEN_SERVICES or self._authorized(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        return _DENY

    def _authorized(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == METADATA_KEY:
                presented = value if isinstance(value, bytes) else str(value).encode("utf-8")
                return hmac.compare_digest(presented, self._secret)
        return False
