"""The gateway's interceptors on a real grpc.aio server (loopback) with a fake Matcher."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import re
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from gateway.interceptors import (
    _STATE,
    PUSHBACK_METADATA,
    CallState,
    QuotaInterceptor,
    build_interceptors,
)
from gateway.metrics import GatewayMetrics, start_metrics_server
from gateway.overload import AdaptiveLimiter
from gateway.quota import QuotaBook
from gateway.tenants import Tenant, TenantRegistry, hash_key
from tunggal.ops.v1 import ops_pb2 as ops_pb
from tunggal.ops.v1 import ops_pb2_grpc as ops_grpc
from tunggal.settings import GatewaySettings
from tunggal.v1 import tunggal_pb2 as pb
from tunggal.v1 import tunggal_pb2_grpc as pbg

T = TypeVar("T")

KEYS = {
    "bank-x": "key-bank-x-0123456789",
    "agency": "key-agency-0123456789",
    "shadowy": "key-shadowy-0123456789",
    "narrow": "key-narrow-0123456789",
    "bulk": "key-bulk-0123456789",
}
TEMPLATE_MARKER = b"TEMPLATE-BYTES-MARKER-0001"


def tenants_toml(bank_methods: str = '"Verify"', bank_key: str = KEYS["bank-x"]) -> str:
    h = {name: hash_key(key) for name, key in KEYS.items()}
    return f"""
[tenants.bank-x]
priority = "critical"
api_key_sha256 = ["{hash_key(bank_key)}"]
methods = [{bank_methods}]

[tenants.agency]
api_key_sha256 = ["{h["agency"]}"]
methods = ["Identify", "Verify"]
[tenants.agency.quotas.Identify]
rate = 2
burst = 2

[tenants.shadowy]
api_key_sha256 = ["{h["shadowy"]}"]
methods = ["Verify"]
[tenants.shadowy.quotas.Verify]
rate = 0.01
burst = 1
shadow = true

[tenants.narrow]
api_key_sha256 = ["{h["narrow"]}"]
methods = ["Verify", "GetSubject"]
[tenants.narrow.quotas.Verify]
concurrency = 1
[tenants.narrow.quotas.GetSubject]
daily = 1

[tenants.bulk]
priority = "batch"
api_key_sha256 = ["{h["bulk"]}"]
methods = ["Verify"]
"""


class FakeMatcher(pbg.MatcherServicer):
    """Records what ran; "block*" subjects wait for `release`."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, str]] = []
        self.release = asyncio.Event()

    async def Verify(
        self, request: pb.VerifyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.VerifyResponse:
        self.ran.append(("Verify", request.subject_id))
        if request.subject_id.startswith("block"):
            await self.release.wait()
        if request.subject_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "subject missing is not enrolled")
        return pb.VerifyResponse(subject_id=request.subject_id, score=0.9, match=True)

    async def Identify(
        self, request: pb.IdentifyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.IdentifyResponse:
        self.ran.append(("Identify", ""))
        return pb.IdentifyResponse(
            candidates=[
                pb.Candidate(subject_id="nik-1", score=0.9, shard="node-0"),
                pb.Candidate(subject_id="nik-2", score=0.7, shard="node-1"),
            ],
            shards_answered=2,
            shards_total=2,
        )

    async def GetSubject(
        self, request: pb.GetSubjectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Subject:
        self.ran.append(("GetSubject", request.subject_id))
        return pb.Subject(subject_id=request.subject_id, template_count=1)


class FakeOperations(ops_grpc.OperationsServicer):
    """Records the Operations calls that got past the interceptors into `ran`."""

    def __init__(self, ran: list[tuple[str, str]]) -> None:
        self.ran = ran

    async def Stats(
        self, request: ops_pb.StatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ops_pb.StatsResponse:
        self.ran.append(("Stats", ""))
        return ops_pb.StatsResponse()


@dataclass
class _Stubs:
    """Both services' stubs behind one attribute lookup (Stats is Operations')."""

    matcher: Any
    operations: Any

    def __getattr__(self, method: str) -> Any:
        return getattr(self.operations if method == "Stats" else self.matcher, method)


@dataclass
class Gateway:
    servicer: FakeMatcher
    registry: TenantRegistry
    prom: CollectorRegistry
    channel: grpc.aio.Channel
    path: Path

    @property
    def stub(self) -> Any:
        return _Stubs(pbg.MatcherStub(self.channel), ops_grpc.OperationsStub(self.channel))

    def metric(self, name: str, **labels: str) -> float:
        return self.prom.get_sample_value(name, labels) or 0.0


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    trailers: dict[str, str]
    response: Any = None


async def call(
    gw: Gateway, method: str, request: Any, key: str | None, timeout_s: float = 5.0
) -> Outcome:
    metadata = () if key is None else (("authorization", f"Bearer {key}"),)
    try:
        response = await getattr(gw.stub, method)(request, metadata=metadata, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        trailing: Any = exc.trailing_metadata() or ()  # grpc.aio.Metadata: (key, value) pairs
        trailers = {k: str(v) for k, v in trailing}
        return Outcome(exc.code(), exc.details() or "", trailers)
    return Outcome(grpc.StatusCode.OK, "", {}, response)


def verify(subject_id: str = "s-1") -> pb.VerifyRequest:
    probe = pb.Probe(template=pb.Template(data=TEMPLATE_MARKER, dim=4))
    return pb.VerifyRequest(subject_id=subject_id, probe=probe)


@asynccontextmanager
async def gateway(path: Path, limiter: AdaptiveLimiter | None = None) -> AsyncIterator[Gateway]:
    registry = TenantRegistry.from_file(path)
    prom = CollectorRegistry()
    servicer = FakeMatcher()  # type: ignore[abstract]  # base is not abstract at runtime
    server = grpc.aio.server(
        interceptors=build_interceptors(
            registry, limiter or AdaptiveLimiter(), metrics=GatewayMetrics(prom)
        )
    )
    pbg.add_MatcherServicer_to_server(servicer, server)
    ops_grpc.add_OperationsServicer_to_server(FakeOperations(servicer.ran), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        ("tunggal.v1.Matcher", "grpc.health.v1.Health", reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Gateway(servicer, registry, prom, channel, path)
    finally:
        servicer.release.set()
        await registry.stop()
        await channel.close(None)
        await server.stop(None)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=15))


def serve(
    tmp_path: Path,
    scenario: Callable[[Gateway], Awaitable[None]],
    limiter: Callable[[], AdaptiveLimiter] | None = None,
) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(tenants_toml())

    async def main() -> None:
        async with gateway(path, limiter() if limiter else None) as gw:
            await scenario(gw)

    run(main())


async def until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    for _ in range(int(timeout_s / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    pytest.fail("condition not reached in time")


def events(buf: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in buf.getvalue().splitlines() if line.strip())
    return [e for e in lines if e.get("event") == name]


# --- authentication and authorization -------------------------------------------------


def test_missing_or_unknown_key_is_unauthenticated(tmp_path: Path) -> None:
    async def scenario(gw: Gateway) -> None:
        missing = await call(gw, "Verify", verify(), None)
        assert missing.code == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer <key>" in missing.details
        unknown = await call(gw, "Verify", verify(), "not-a-key")
        assert (unknown.code, unknown.details) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "unknown API key",
        )
        basic = await gw.stub.Verify(verify(), metadata=(("authorization", "Basic x"),)).code()
        assert basic == grpc.StatusCode.UNAUTHENTICATED
        assert PUSHBACK_METADATA not in missing.trailers
        assert gw.servicer.ran == []

    serve(tmp_path, scenario)


def test_tenant_cannot_call_a_method_it_lacks(tmp_path: Path) -> None:
    async def scenario(gw: Gateway) -> None:
        key = KEYS["bank-x"]
        denied = await call(gw, "Identify", pb.IdentifyRequest(k=5), key)
        assert denied.code == grpc.StatusCode.PERMISSION_DENIED
        assert denied.details == "tenant bank-x may not call Identify"
        stats = await call(gw, "Stats", ops_pb.StatsRequest(), key)
        assert stats.code == grpc.StatusCode.PERMISSION_DENIED
        ok = await call(gw, "Verify", verify("s-9"), key)
        assert ok.code == grpc.StatusCode.OK and ok.response.subject_id == "s-9"
        assert gw.servicer.ran == [("Verify", "s-9")]

    serve(tmp_path, scenario)


def test_health_and_reflection_need_no_key(tmp_path: Path) -> None:
    async def scenario(gw: Gateway) -> None:
        health_stub = health_pb2_grpc.HealthStub(gw.channel)
        reply = await health_stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(gw.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in refl.ServerReflectionInfo(iter([request]), timeout=5):
            names = {s.name for s in answer.list_services_response.service}
            assert "tunggal.v1.Matcher" in names
            break

    serve(tmp_path, scenario)


# --- quotas ----------------------------------------------------------------------------


def test_rate_quota_rejects_with_pushback(tmp_path: Path) -> None:
    async def scenario(gw: Gateway) -> None:
        key = KEYS["agency"]
        for _ in range(2):
            assert (await call(gw, "Identify", pb.IdentifyRequest(k=5), key)).code.name == "OK"
        hit = await call(gw, "Identify", pb.IdentifyRequest(k=5), key)
        assert hit.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        match = re.fullmatch(
            r"tenant agency: Identify rate quota 2/s exceeded, retry in (\d+) ms", hit.details
        )
        assert match, hit.details
        assert hit.trailers[PUSHBACK_METADATA] == match.group(1)
        assert 1 <= int(match.group(1)) <= 500
        # Other methods of the tenant have their own (here: no) quota.
        assert (await call(gw, "Verify", verify(), key)).code == grpc.StatusCode.OK
        assert len([r for r in gw.servicer.ran if r[0] == "Identify"]) == 2
        assert (
            gw.metric(
                "tunggal_gateway_rejections_total",
                tenant="agency",
                method="Identify",
                reason="quota_rate",
            )
            == 1.0
        )

    serve(tmp_path, scenario)


def test_concurrency_quota_rejects_while_a_call_is_in_flight(tmp_path: Path) -> None:
    async def scenario(gw: Gateway) -> None:
        key = KEYS["narrow"]
        first = asyncio.create_task(call(gw, "Verify", verify("block-1"), key))
        await until(lambda: ("Verify", "block-1") in gw.servicer.ran)
        hit = await call(gw, "Verify", verify("s-2"), key)
        assert hit.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert hit.details.startswith("tenant narrow: Verify concurrency quota 1 in flight")
        assert int(hit.trailers[PUSHBACK_METADATA]) >= 1
        gw.servicer.release.set()
        assert (await first).code == grpc.StatusCode.OK
        assert (await call(gw, "Verify", verify("s-3"), key)).code == grpc.StatusCode.OK
        assert ("Verify", "s-2") not in gw.servicer.ran

    serve(tmp_path, scenario)


def test_quota_slot_comes_back_when_the_handler_never_runs() -> None:
    """grpc.aio drops an admitted call's handler unused when the caller goes
    away before sending its request: the concurrency slot must come back."""
    quotas = QuotaInterceptor(QuotaBook())
    tenant = Tenant.model_validate(
        {
            "id": "narrow",
            "api_key_sha256": [hash_key(KEYS["narrow"])],
            "methods": ["Verify"],
            "quotas": {"Verify": {"concurrency": 1}},
        }
    )
    inner = grpc.unary_unary_rpc_method_handler(lambda request, _context: request)
    details = SimpleNamespace(method="/tunggal.v1.Matcher/Verify", invocation_metadata=())

    async def continuation(_: Any) -> Any:
        return inner

    async def arrive() -> tuple[Any, CallState]:
        state = CallState("Verify", tenant)
        _STATE.set(state)  # this task's own context, as grpc.aio gives each call
        handler_details = cast(grpc.HandlerCallDetails, details)  # a stand-in, duck-typed
        return await quotas.intercept_service(continuation, handler_details), state

    async def scenario() -> None:
        first, state = await asyncio.create_task(arrive())
        assert state.reason is None and first is not inner  # admitted, wrapped
        _, state = await asyncio.create_task(arrive())
        assert state.reason == "quota_concurrency"  # the slot is held
        del first  # never run
        gc.collect()
        _, state = await asyncio.create_task(arrive())
        assert state.reason is None

    run(scenario())


def test_daily_quota(tmp_path: Path) -> None:
    async def scenario(gw: Gateway) -> None:
        key = KEYS["narrow"]
        request = pb.GetSubjectRequest(subject_id="s-1")
        assert (await call(gw, "GetSubject", request, key)).code == grpc.StatusCode.OK
        hit = await call(gw, "GetSubject", request, key)
        assert hit.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "GetSubject daily quota 1/day exceeded" in hit.details
        assert 1 <= int(hit.trailers[PUSHBACK_METADATA]) <= 86_400_000

    serve(tmp_path, scenario)


def test_shadow_quota_counts_but_does_not_reject(tmp_path: Path, log_buffer: io.StringIO) -> None:
    async def scenario(gw: Gateway) -> None:
        key = KEYS["shadowy"]
        for i in range(3):
            assert (await call(gw, "Verify", verify(f"s-{i}"), key)).code == grpc.StatusCode.OK
        assert len(gw.servicer.ran) == 3
        labels = {"tenant": "shadowy", "method": "Verify"}
        assert gw.metric("tunggal_gateway_shadow_rejections_total", reason="quota_rate", **labels)
        assert (
            gw.metric("tunggal_gateway_shadow_rejections_total", reason="quota_rate", **labels)
            == 2.0
        )
        assert gw.metric("tunggal_gateway_rejections_total", reason="quota_rate", **labels) == 0

    serve(tmp_path, scenario)
    warned = events(log_buffer, "quota_shadow_exceeded")
    assert len(warned) == 2 and warned[0]["tenant"] == "shadowy"
    audited = events(log_buffer, "audit")
    assert [a.get("shadow") for a in audited] == [None, ["quota_rate"], ["quota_rate"]]


# --- overload ------------------------------------------------------------------------------


def one_slot(service_s: float) -> AdaptiveLimiter:
    return AdaptiveLimiter(
        GatewaySettings(
            overload_initial_limit=1,
            overload_min_limit=1,
            overload_max_limit=1,
            overload_initial_service_s=service_s,
        )
    )


def test_call_that_cannot_start_before_its_deadline_is_rejected_at_once(tmp_path: Path) -> None:
    async def scenario(gw: Gateway) -> None:
        key = KEYS["bank-x"]
        busy = asyncio.create_task(call(gw, "Verify", verify("block-1"), key))
        await until(lambda: len(gw.servicer.ran) == 1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        late = await call(gw, "Verify", verify("late"), key, timeout_s=0.5)
        assert loop.time() - start < 0.3  # rejected, not queued until the deadline
        assert late.code == grpc.StatusCode.UNAVAILABLE
        assert "cannot start within its deadline" in late.details
        assert int(late.trailers[PUSHBACK_METADATA]) >= 1
        gw.servicer.release.set()
        assert (await busy).code == grpc.StatusCode.OK
        assert ("Verify", "late") not in gw.servicer.ran
        assert (
            gw.metric(
                "tunggal_gateway_rejections_total",
                tenant="bank-x",
                method="Verify",
                reason="overload_deadline",
            )
            == 1.0
        )

    serve(tmp_path, scenario, limiter=lambda: one_slot(service_s=2.0))


def test_call_whose_deadline_passes_in_the_queue_is_not_run(tmp_path: Path) -> None:
    async def scenario(gw: Gateway) -> None:
        key = KEYS["bank-x"]
        busy = asyncio.create_task(call(gw, "Verify", verify("block-1"), key))
        await until(lambda: len(gw.servicer.ran) == 1)
        late = await call(gw, "Verify", verify("late"), key, timeout_s=0.2)
        assert late.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        # Already expired: the guard (or gRPC itself) refuses it.
        expired = await call(gw, "Verify", verify("expired"), key, timeout_s=0.0)
        assert expired.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        gw.servicer.release.set()
        assert (await busy).code == grpc.StatusCode.OK
        assert (await call(gw, "Verify", verify("after"), key)).code == grpc.StatusCode.OK
        assert [s for _, s in gw.servicer.ran] == ["block-1", "after"]

    serve(tmp_path, scenario, limiter=lambda: one_slot(service_s=0.01))


# --- audit, metrics, logs -------------------------------------------------------------------


def test_audit_line_per_call_and_metrics(tmp_path: Path, log_buffer: io.StringIO) -> None:
    async def scenario(gw: Gateway) -> None:
        found = await call(gw, "Identify", pb.IdentifyRequest(k=5), KEYS["agency"])
        assert found.code == grpc.StatusCode.OK
        missing = await call(gw, "Verify", verify("missing"), KEYS["bank-x"])
        assert missing.code == grpc.StatusCode.NOT_FOUND
        assert (await call(gw, "Verify", verify(), None)).code.name == "UNAUTHENTICATED"
        # A rejection is counted as its call ends, which can be just after the
        # client has its answer: wait (briefly) for the last one to land.
        for _ in range(200):
            if gw.metric(
                "tunggal_gateway_rejections_total",
                tenant="-",
                method="Verify",
                reason="unauthenticated",
            ):
                break
            await asyncio.sleep(0.01)
        assert (
            gw.metric("tunggal_gateway_calls_total", tenant="agency", method="Identify", code="OK")
            == 1.0
        )
        assert (
            gw.metric(
                "tunggal_gateway_calls_total", tenant="bank-x", method="Verify", code="NOT_FOUND"
            )
            == 1.0
        )
        assert (
            gw.metric(
                "tunggal_gateway_rejections_total",
                tenant="-",
                method="Verify",
                reason="unauthenticated",
            )
            == 1.0
        )
        assert (
            gw.metric(
                "tunggal_gateway_call_latency_seconds_count", tenant="agency", method="Identify"
            )
            == 1.0
        )
        assert gw.metric("tunggal_gateway_in_flight", tenant="agency", method="Identify") == 0
        assert gw.metric("tunggal_gateway_overload_in_flight") == 0
        assert gw.metric("tunggal_gateway_overload_limit") >= 1

    serve(tmp_path, scenario)
    identify, verified, anonymous = events(log_buffer, "audit")
    assert identify["tenant"] == "agency" and identify["method"] == "Identify"
    assert identify["code"] == "OK" and identify["candidates"] == ["nik-1", "nik-2"]
    assert isinstance(identify["latency_ms"], float) and identify["latency_ms"] >= 0
    assert verified["code"] == "NOT_FOUND" and verified["subject_id"] == "missing"
    assert "candidates" not in verified
    assert anonymous["tenant"] == "-" and anonymous["reason"] == "unauthenticated"


def test_keys_and_templates_are_never_logged(
    tmp_path: Path, log_buffer: io.StringIO, capfd: pytest.CaptureFixture[str]
) -> None:
    async def scenario(gw: Gateway) -> None:
        await call(gw, "Verify", verify(), KEYS["bank-x"])
        await call(gw, "Identify", pb.IdentifyRequest(k=5), KEYS["bank-x"])
        for _ in range(3):
            await call(gw, "Identify", pb.IdentifyRequest(k=5), KEYS["agency"])
        await call(gw, "Verify", verify(), KEYS["shadowy"])
        await call(gw, "Verify", verify(), KEYS["shadowy"])
        await call(gw, "Verify", verify(), "key-that-nobody-has-0123456789")
        # A broken reload is logged with its reason, never with a hash.
        gw.path.write_text(tenants_toml() + '\n[tenants.broken]\napi_key_sha256 = ["zz"]\n')
        st = gw.path.stat()
        os.utime(gw.path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        assert not gw.registry.reload_if_changed()

    serve(tmp_path, scenario)
    captured = capfd.readouterr()
    text = log_buffer.getvalue() + captured.out + captured.err
    assert len(events(log_buffer, "audit")) == 8  # the capture did see the calls
    assert events(log_buffer, "tenants_reload_failed")
    secrets = [*KEYS.values(), "key-that-nobody-has-0123456789"]
    for secret in secrets:
        assert secret not in text
        assert hash_key(secret) not in text
    assert TEMPLATE_MARKER.decode() not in text


# --- hot reload -------------------------------------------------------------------------------


def test_hot_reload_takes_effect_without_restart(tmp_path: Path) -> None:
    async def scenario(gw: Gateway) -> None:
        gw.registry.start(0.01)
        key = KEYS["bank-x"]
        denied = await call(gw, "Identify", pb.IdentifyRequest(k=5), key)
        assert denied.code == grpc.StatusCode.PERMISSION_DENIED

        gw.path.write_text(tenants_toml(bank_methods='"Verify", "Identify"'))
        st = gw.path.stat()
        os.utime(gw.path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        await until(lambda: gw.registry.generation == 2)
        assert (await call(gw, "Identify", pb.IdentifyRequest(k=5), key)).code.name == "OK"

        # Rotating the key out revokes it at once, too.
        gw.path.write_text(tenants_toml(bank_key="key-bank-x-rotated-0123456789"))
        st = gw.path.stat()
        os.utime(gw.path, ns=(st.st_atime_ns, st.st_mtime_ns + 4_000_000_000))
        await until(lambda: gw.registry.generation == 3)
        old = await call(gw, "Verify", verify(), key)
        assert old.code == grpc.StatusCode.UNAUTHENTICATED
        new = await call(gw, "Verify", verify(), "key-bank-x-rotated-0123456789")
        assert new.code == grpc.StatusCode.OK

    serve(tmp_path, scenario)


def test_metrics_http_endpoint() -> None:
    prom = CollectorRegistry()
    metrics = GatewayMetrics(prom)
    metrics.calls.labels("agency", "Identify", "OK").inc()
    server, thread = start_metrics_server(0, "127.0.0.1", registry=prom)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            body = reply.read().decode()
        sample = 'tunggal_gateway_calls_total{code="OK",method="Identify",tenant="agency"} 1.0'
        assert sample in body
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
