"""grpc.aio server interceptors guarding the public tunggal.v1.Matcher service.

`build_interceptors` returns them in order, outermost first:

1. `ObserveInterceptor`: audit line and metrics around every call, rejected or not;
2. `AuthInterceptor`: ``authorization: Bearer <key>`` -> tenant, else
   UNAUTHENTICATED; a method the tenant lacks -> PERMISSION_DENIED
   ("tenant bank-x may not call Identify");
3. `QuotaInterceptor`: the tenant's quota of the method -> RESOURCE_EXHAUSTED
   ("tenant agency: Identify rate quota 50/s exceeded, retry in 120 ms");
4. `OverloadInterceptor`: the adaptive limiter (by priority, tenants in turn)
   -> UNAVAILABLE when shed.

Both rejections that may be retried carry the trailer ``grpc-retry-pushback-ms``.
Health and reflection stay open without a key. Authentication happens before
the request is deserialised; the rest wraps the method's behaviour. The
interceptors share per-call state through a contextvar (grpc.aio runs a
call's interceptors and handler in one context).
"""

from __future__ import annotations

import asyncio
import inspect
import time
import weakref
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NoReturn

import grpc
import grpc.aio
import structlog

from gateway.audit import AuditEntry, AuditLog, request_fields, response_fields
from gateway.metrics import GatewayMetrics
from gateway.overload import AdaptiveLimiter, Shed
from gateway.quota import QuotaBook
from gateway.tenants import METHODS, Priority, Tenant, TenantRegistry
from tunggal.ops.v1 import ops_pb2 as ops_pb
from tunggal.v1 import tunggal_pb2 as pb

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor
    Handler = grpc.RpcMethodHandler
    Context = grpc.aio.ServicerContext

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler"]]
Behaviour = Callable[[Any, "Context"], Awaitable[Any]]

_log = structlog.get_logger("tunggal.gateway.interceptors")

MATCHER_SERVICE: Final = pb.DESCRIPTOR.services_by_name["Matcher"].full_name
OPERATIONS_SERVICE: Final = ops_pb.DESCRIPTOR.services_by_name["Operations"].full_name
TENANT_SERVICES: Final = frozenset({MATCHER_SERVICE, OPERATIONS_SERVICE})
"""Services whose methods a tenant may be allowed by name (Stats is Operations')."""
OPEN_SERVICES: Final = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
AUTH_METADATA: Final = "authorization"
PUSHBACK_METADATA: Final = "grpc-retry-pushback-ms"
ANONYMOUS: Final = "-"


def split_method(path: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    service, _, method = path.lstrip("/").partition("/")
    return service, method


@dataclass(slots=True)
class CallState:
    """What the interceptors learn about one call, shared through a contextvar."""

    method: str
    tenant: Tenant | None = None
    reason: str | None = None
    shadow: list[str] = field(default_factory=list)

    @property
    def tenant_label(self) -> str:
        """The tenant id for metrics, ``-`` before (or without) authentication."""
        return self.tenant.id if self.tenant is not None else ANONYMOUS

    @property
    def method_label(self) -> str:
        """The method name for metrics; ``other`` outside the tenant API (bounded labels)."""
        return self.method if self.method in METHODS else "other"


_STATE: ContextVar[CallState | None] = ContextVar("tunggal_call_state", default=None)


def _call_state(details: grpc.HandlerCallDetails) -> CallState:
    """This call's state, created on first use."""
    state = _STATE.get()
    if state is None:
        service, method = split_method(details.method)
        state = CallState(method if service in TENANT_SERVICES else details.method[:128])
        _STATE.set(state)
    return state


def _is_open(details: grpc.HandlerCallDetails) -> bool:
    return split_method(details.method)[0] in OPEN_SERVICES


def _is_unary(handler: Handler | None) -> bool:
    return (
        handler is not None
        and not handler.request_streaming
        and not handler.response_streaming
        and handler.unary_unary is not None
    )


def _wrap(handler: Handler, make: Callable[[Behaviour], Behaviour]) -> Handler:
    """`handler` with its unary behaviour replaced by `make(behaviour)`."""
    inner: Callable[[Any, Any], Any] = handler.unary_unary  # type: ignore[assignment]

    async def behaviour(request: Any, context: Context) -> Any:
        result = inner(request, context)
        return await result if inspect.isawaitable(result) else result

    return grpc.unary_unary_rpc_method_handler(
        make(behaviour),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def abort_with_pushback(
    context: Context, code: grpc.StatusCode, message: str, pushback_ms: int | None = None
) -> NoReturn:
    """Abort the call; `pushback_ms` goes to the ``grpc-retry-pushback-ms`` trailer."""
    if pushback_ms is not None:
        context.set_trailing_metadata(((PUSHBACK_METADATA, str(pushback_ms)),))
    await context.abort(code, message)


def _rejection(code: grpc.StatusCode, message: str, pushback_ms: int | None = None) -> Handler:
    """A handler that rejects the call without deserialising the request."""

    async def reject(_request: Any, context: Context) -> NoReturn:
        await abort_with_pushback(context, code, message, pushback_ms)

    return grpc.unary_unary_rpc_method_handler(reject)


def _deadline_passed(context: Context) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def bearer_key(metadata: Any) -> str | None:
    """The key of the first ``authorization: Bearer <key>`` metadata entry, if any."""
    for key, value in metadata or ():
        if key != AUTH_METADATA:
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return token
        return None
    return None


class ObserveInterceptor(_ServerInterceptor):
    """Audit line and metrics around every public call (outermost)."""

    def __init__(self, audit: AuditLog, metrics: GatewayMetrics | None = None) -> None:
        self._audit = audit
        self._metrics = metrics

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        """Wrap a unary tenant call so that its outcome is audited and counted."""
        if _is_open(handler_call_details):
            return await continuation(handler_call_details)
        state = _call_state(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None or not _is_unary(handler):
            return handler
        return _wrap(handler, lambda inner: self._observe(state, inner))

    def _observe(self, state: CallState, inner: Behaviour) -> Behaviour:
        async def behaviour(request: Any, context: Context) -> Any:
            entry = AuditEntry(method=state.method, peer=context.peer())
            request_fields(entry, state.method, request)
            labels = (state.tenant_label, state.method_label)
            if self._metrics is not None:
                self._metrics.in_flight.labels(*labels).inc()
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = await inner(request, context)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                passed = _deadline_passed(context)
                code = grpc.StatusCode.DEADLINE_EXCEEDED if passed else grpc.StatusCode.CANCELLED
                raise
            else:
                code = context.code() or grpc.StatusCode.OK
                response_fields(entry, state.method, response)
                return response
            finally:
                elapsed = time.perf_counter() - start
                entry.tenant = state.tenant.id if state.tenant is not None else None
                entry.code = code
                entry.latency_ms = elapsed * 1000.0
                entry.reason = state.reason
                entry.shadow = state.shadow
                self._audit.record(entry)
                if self._metrics is not None:
                    m = self._metrics
                    m.in_flight.labels(*labels).dec()
                    m.calls.labels(*labels, code.name).inc()
                    m.latency.labels(*labels).observe(elapsed)
                    if state.reason is not None:
                        m.rejections.labels(*labels, state.reason).inc()
                    for quota in state.shadow:
                        m.shadow_rejections.labels(*labels, quota).inc()

        return behaviour


class AuthInterceptor(_ServerInterceptor):
    """Authenticates the API key and authorizes the method; health/reflection stay open."""

    def __init__(self, registry: TenantRegistry) -> None:
        self._registry = registry

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        """Continue with the caller's tenant, or answer UNAUTHENTICATED / PERMISSION_DENIED."""
        details = handler_call_details
        if _is_open(details):
            return await continuation(details)
        state = _call_state(details)
        key = bearer_key(details.invocation_metadata)
        if key is None:
            state.reason = "unauthenticated"
            return _rejection(
                grpc.StatusCode.UNAUTHENTICATED,
                f"missing API key: send metadata '{AUTH_METADATA}: Bearer <key>'",
            )
        tenant = self._registry.authenticate(key)
        if tenant is None:
            state.reason = "unauthenticated"
            return _rejection(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
        state.tenant = tenant
        service, method = split_method(details.method)
        if service not in TENANT_SERVICES or not tenant.may_call(method):
            state.reason = "permission_denied"
            return _rejection(
                grpc.StatusCode.PERMISSION_DENIED,
                f"tenant {tenant.id} may not call {state.method}",
            )
        return await continuation(details)


class QuotaInterceptor(_ServerInterceptor):
    """Applies the tenant's quota of the method (after `AuthInterceptor`).

    The decision is taken when the call arrives, before its request is read
    or deserialised, so a rejection costs about what an unauthenticated call
    does. An admitted call gives its concurrency slot back when its handler
    ends, or when grpc.aio drops the handler unused (the caller went away
    before sending its request).
    """

    def __init__(self, quotas: QuotaBook) -> None:
        self._quotas = quotas

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        """Admit the call under its tenant's quota, or answer RESOURCE_EXHAUSTED with pushback."""
        state = _STATE.get()
        tenant = state.tenant if state is not None else None
        spec = tenant.quota(state.method) if state is not None and tenant is not None else None
        if state is None or tenant is None or spec is None:
            return await continuation(handler_call_details)
        admission = self._quotas.admit(tenant.id, state.method, spec)
        hit = admission.rejection
        if hit is not None:
            state.reason = f"quota_{hit.quota}"
            return _rejection(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"tenant {tenant.id}: {state.method} {hit.describe()}, "
                f"retry in {hit.retry_after_ms} ms",
                hit.retry_after_ms,
            )
        if admission.shadow:
            state.shadow.extend(f"quota_{r.quota}" for r in admission.shadow)
            _log.warning(
                "quota_shadow_exceeded",
                tenant=tenant.id,
                method=state.method,
                quotas=[r.describe() for r in admission.shadow],
            )
        try:
            handler = await continuation(handler_call_details)
        except BaseException:
            admission.release()
            raise
        if handler is None or not _is_unary(handler):
            admission.release()
            return handler

        def make(inner: Behaviour) -> Behaviour:
            async def behaviour(request: Any, context: Context) -> Any:
                try:
                    return await inner(request, context)
                finally:
                    admission.release()

            weakref.finalize(behaviour, admission.release)  # never run: still released
            return behaviour

        return _wrap(handler, make)


class OverloadInterceptor(_ServerInterceptor):
    """Admits calls through the adaptive limiter by tenant priority (innermost)."""

    def __init__(self, limiter: AdaptiveLimiter) -> None:
        self._limiter = limiter

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        """Wrap the call so that it runs only once the limiter admits it, else UNAVAILABLE."""
        state = _STATE.get()
        handler = await continuation(handler_call_details)
        if state is None or handler is None or not _is_unary(handler):
            return handler
        priority = state.tenant.priority if state.tenant is not None else Priority.NORMAL

        def make(inner: Behaviour) -> Behaviour:
            async def behaviour(request: Any, context: Context) -> Any:
                outcome = await self._limiter.acquire(
                    priority, context.time_remaining(), state.method, state.tenant_label
                )
                if isinstance(outcome, Shed):
                    state.reason = f"overload_{outcome.reason}"
                    await abort_with_pushback(
                        context,
                        grpc.StatusCode.UNAVAILABLE,
                        outcome.message,
                        outcome.retry_after_ms,
                    )
                dropped = False
                try:
                    return await inner(request, context)
                except asyncio.CancelledError:
                    dropped = _deadline_passed(context)
                    raise
                except grpc.aio.AbortError:
                    dropped = context.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                    raise
                finally:
                    outcome.release(dropped=dropped)

            return behaviour

        return _wrap(handler, make)


def build_interceptors(
    registry: TenantRegistry | None,
    limiter: AdaptiveLimiter | None,
    *,
    quotas: QuotaBook | None = None,
    audit: AuditLog | None = None,
    metrics: GatewayMetrics | None = None,
) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """The gateway's interceptors, outermost first; pass them to ``grpc.aio.server``.

    `registry` None turns authentication and quotas off (every call is
    anonymous, tenant ``-``, normal priority): for local experiments only.
    """
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = [
        ObserveInterceptor(audit or AuditLog(), metrics)
    ]
    if registry is not None:
        interceptors += [AuthInterceptor(registry), QuotaInterceptor(quotas or QuotaBook())]
    if limiter is not None:
        interceptors.append(OverloadInterceptor(limiter))
        if metrics is not None:
            metrics.watch_limiter(limiter)
    return interceptors
