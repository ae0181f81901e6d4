"""tunggal_tools.load: flag parsing, bounds, open-loop timing, per-tenant summaries, the CLI."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

from tunggal.v1 import tunggal_pb2 as pb
from tunggal.v1 import tunggal_pb2_grpc as pbg
from tunggal_tools import cli
from tunggal_tools.load import (
    LoadConfig,
    LoadError,
    TenantLoad,
    is_loopback,
    parse_duration,
    parse_tenant,
    run_load,
)

Context = grpc.aio.ServicerContext[Any, Any]


class FakeMatcher(pbg.MatcherServicer):
    """Identify takes `delay` s; key "good" is served, "over" is over quota, none is refused."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.in_flight = 0
        self.peak = 0

    async def Identify(self, request: pb.IdentifyRequest, context: Context) -> pb.IdentifyResponse:
        keys = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        if not keys:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing API key")
        if keys[0] == "Bearer over":
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "rate quota 1/s exceeded, retry in 734 ms"
            )
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return pb.IdentifyResponse(shards_answered=1, shards_total=1)

    async def Verify(self, request: pb.VerifyRequest, context: Context) -> pb.VerifyResponse:
        assert request.subject_id.startswith("3171") and len(request.probe.template.data) == 512
        return pb.VerifyResponse(subject_id=request.subject_id, match=True)


class ServerThread:
    def __init__(self) -> None:
        self.fake = FakeMatcher()  # type: ignore[abstract]  # base is not abstract at runtime
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: grpc.aio.Server | None = None
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> int:
        self.server = grpc.aio.server()
        pbg.add_MatcherServicer_to_server(self.fake, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        assert self.server is not None
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def server() -> Iterator[ServerThread]:
    srv = ServerThread()
    yield srv
    srv.stop()


def config(address: str, *tenants: TenantLoad, **kw: Any) -> LoadConfig:
    kw.setdefault("subjects", 50)
    kw.setdefault("pool", 16)
    return LoadConfig(address=address, method=kw.pop("method", "Identify"), tenants=tenants, **kw)


# ---- parsing and bounds -------------------------------------------------------------


def test_parse_tenant_forms() -> None:
    assert parse_tenant("a:key-1:50:8", 0, 16) == TenantLoad("a", "key-1", 50.0, 8)
    assert parse_tenant("a:key-1:7.5", 0, 16) == TenantLoad("a", "key-1", 7.5, 16)
    assert parse_tenant("a:key:with:colons:5:2", 0, 16) == TenantLoad("a", "key:with:colons", 5, 2)
    assert parse_tenant("a::5:2", 0, 16) == TenantLoad("a", None, 5.0, 2)  # no key at all
    assert parse_tenant("agency", 3, 4) == TenantLoad("agency", "demo-key-agency", 3.0, 4)
    assert parse_tenant("stranger", 3, 4).key is None


def test_parse_tenant_reads_a_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOAD_TEST_KEY", "from-env")
    assert parse_tenant("a:env:LOAD_TEST_KEY:5:1", 0, 16).key == "from-env"
    with pytest.raises(LoadError, match="NOT_SET_ANYWHERE"):
        parse_tenant("a:env:NOT_SET_ANYWHERE", 0, 16)


def test_parse_duration() -> None:
    assert parse_duration("30s") == 30.0
    assert parse_duration("2m") == 120.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration("1.5") == 1.5
    with pytest.raises(Exception, match="not a duration"):
        parse_duration("soon")


def test_loads_are_bounded_and_local_by_default() -> None:
    tenant = TenantLoad("t", "k")
    with pytest.raises(LoadError, match="bounded"):
        LoadConfig(address="127.0.0.1:1", method="Identify", tenants=(tenant,))
    with pytest.raises(LoadError, match="allow-remote"):
        LoadConfig(address="10.1.2.3:50051", method="Identify", tenants=(tenant,), total=1)
    LoadConfig(
        address="10.1.2.3:50051", method="Identify", tenants=(tenant,), total=1, allow_remote=True
    )
    with pytest.raises(LoadError, match="duration"):
        LoadConfig(address="127.0.0.1:1", method="Identify", tenants=(tenant,), duration_s=1e6)
    with pytest.raises(LoadError, match="method"):
        LoadConfig(address="127.0.0.1:1", method="Delete", tenants=(tenant,), total=1)
    with pytest.raises(LoadError, match="concurrency"):
        TenantLoad("t", None, 1.0, 0)
    assert is_loopback("127.0.0.1:50051") and is_loopback("[::1]:50051")
    assert is_loopback("localhost:1") and not is_loopback("example.com:50051")


def test_total_is_split_by_target_rate() -> None:
    two = (TenantLoad("a", None, 30.0), TenantLoad("b", None, 10.0))
    assert LoadConfig("127.0.0.1:1", "Identify", two, total=101).shares() == [76, 25]
    closed = (TenantLoad("a", None, 0.0), TenantLoad("b", None, 10.0))
    assert LoadConfig("127.0.0.1:1", "Identify", closed, total=9).shares() == [5, 4]


# ---- against a server ---------------------------------------------------------------


def test_per_tenant_status_codes_and_counts(server: ServerThread) -> None:
    report = run_load(
        config(
            server.address,
            TenantLoad("good", "good", 200.0, 8),
            TenantLoad("over", "over", 100.0, 8),
            TenantLoad("anonymous", None, 100.0, 8),
            total=80,
        )
    )
    good, over, anonymous = (report.tenant(n) for n in ("good", "over", "anonymous"))
    assert (good.sent, over.sent, anonymous.sent) == (40, 20, 20)
    assert good.codes == {"OK": 40} and good.success_rate == 1.0
    assert over.codes == {"RESOURCE_EXHAUSTED": 20} and over.ok == 0
    assert anonymous.codes == {"UNAUTHENTICATED": 20}
    assert report.total.completed == 80 and report.total.ok == 40
    # Error messages are grouped with their numbers of ms blanked.
    assert over.errors == [(20, "RESOURCE_EXHAUSTED: rate quota 1/s exceeded, retry in N ms")]
    text = report.render()
    assert "[RESOURCE_EXHAUSTED]" in text and "good" in text and "p99" in text


def test_open_loop_sends_at_the_target_rate(server: ServerThread) -> None:
    report = run_load(config(server.address, TenantLoad("t", "good", 100.0, 4), duration_s=1.0))
    t = report.total
    assert 90 <= t.sent <= 101 and t.unsent == 0
    assert 80 <= t.rps <= 110


def test_open_loop_latency_counts_waiting_for_a_slot(server: ServerThread) -> None:
    """Coordinated omission: a slow server must show in latency, not in a lower rate."""
    server.fake.delay = 0.05
    report = run_load(config(server.address, TenantLoad("t", "good", 100.0, 1), total=10))
    t = report.total
    assert t.ok == 10 and server.fake.peak == 1
    # Call i is due at i*10 ms but can only start at i*50 ms: it waits ~40 ms per call ahead.
    assert t.latency.slowest_ms >= 300
    assert t.client_lag.slowest_ms >= 250
    assert t.latency.fastest_ms >= 45


def test_closed_loop_keeps_concurrency_calls_in_flight(server: ServerThread) -> None:
    server.fake.delay = 0.02
    report = run_load(config(server.address, TenantLoad("t", "good", 0.0, 4), total=40))
    assert report.total.ok == 40 and server.fake.peak == 4
    assert report.total.client_lag.slowest_ms < 5  # closed loop: a call is due when sent


def test_cli_json_report(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(
            ["load", "--address", server.address, "--method", "Verify", "-n", "12", "--rps", "200",
             "--subjects", "30", "--key", "good", "--json"]
        )  # fmt: skip
    assert done.value.code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "Verify" and data["total"]["codes"] == {"OK": 12}
    (tenant,) = data["tenants"]
    assert tenant["name"] == "default" and tenant["sent"] == 12
    assert set(tenant["ok_latency_ms"]) >= {"avg", "fastest", "slowest", "p50", "p90", "p99"}


def test_cli_refuses_an_unbounded_or_remote_load(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["load", "--address", "192.0.2.1:50051", "-n", "1"])
    assert done.value.code == 1
    assert "allow-remote" in capsys.readouterr().err
