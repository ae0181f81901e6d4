"""Tenants, audit, metrics and internal auth wired into real processes (LocalCluster).

One cluster (gateway + 2 nodes) with the demo tenants of deploy/tenants.demo.toml
(a copy, so the reload test can change it) and /metrics on a free port.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.tenants import hash_key
from tests.conftest import (
    ROOT,
    free_port,
    free_port_run,
    gateway_process,
    run_to_exit,
    terminate,
)
from tunggal.client import TunggalClient, bearer
from tunggal.internal_auth import METADATA_KEY
from tunggal.node.v1 import node_pb2_grpc as node_grpc
from tunggal.ops.v1 import ops_pb2 as ops_pb
from tunggal_tools.demo import DEMO_KEYS, DEMO_MODEL, seed
from tunggal_tools.localcluster import DEMO_TENANTS_FILE, LocalCluster
from tunggal_tools.synthetic import subject_id

pytestmark = pytest.mark.cluster  # starts real Tunggal processes

SUBJECTS = 300
NEW_KEY = "key-of-a-tenant-added-at-runtime"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("auth")
    tenants = root / "tenants.toml"
    tenants.write_text(DEMO_TENANTS_FILE.read_text())
    made = LocalCluster(
        root / "c",
        base_port=free_port_run(3),
        nodes=2,
        tenants_file=tenants,
        metrics_port=free_port(),
        # Reload on SIGHUP only, so the reload test shows the signal works.
        env={"TUNGGAL_GATEWAY_TENANTS_POLL_S": "3600"},
    )
    made.start()
    try:
        with (
            TunggalClient(made.address, timeout=60, metadata=bearer(DEMO_KEYS["registry"])) as reg,
            TunggalClient(made.address, timeout=60, metadata=bearer(DEMO_KEYS["ops"])) as ops,
        ):
            seed(reg, SUBJECTS, stats=ops, quiet=True)
        yield made
    finally:
        made.stop(timeout=30)


def client(cluster: LocalCluster, tenant: str | None) -> TunggalClient:
    metadata = bearer(DEMO_KEYS[tenant]) if tenant else ()
    return TunggalClient(cluster.address, timeout=10, metadata=metadata)


def status(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    err: Any = info.value
    return err.code(), err.details()


def probe(i: int) -> Any:
    return DEMO_MODEL.samples([i], 1)[0]


def audit_lines(cluster: LocalCluster) -> list[dict[str, Any]]:
    text = (cluster.log_dir / "gateway.log").read_text()
    out = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "audit":
            out.append(entry)
    return out


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_calls_without_a_valid_key_are_unauthenticated(cluster: LocalCluster) -> None:
    with client(cluster, None) as anonymous:
        code, details = status(lambda: anonymous.identify(probe(1), k=3))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in details
    with TunggalClient(cluster.address, metadata=bearer("not-a-key")) as stranger:
        code, details = status(stranger.stats)
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "unknown API key")


def test_each_tenant_may_call_its_methods_only(cluster: LocalCluster) -> None:
    with client(cluster, "bank-x") as bank, client(cluster, "agency") as agency:
        assert bank.verify(subject_id(7), probe(7)).match
        code, details = status(lambda: bank.identify(probe(7), k=3))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details == "tenant bank-x may not call Identify"
        found = agency.identify(probe(7), k=3)
        assert found.candidates[0].subject_id == subject_id(7)
        assert not found.partial and found.shards_answered == 2
        code, _ = status(lambda: agency.enroll(subject_id(10**6), probe(1)))
        assert code == grpc.StatusCode.PERMISSION_DENIED


def test_nodes_answer_the_gateway_only(cluster: LocalCluster) -> None:
    assert cluster.internal_secret
    for spec in cluster.node_specs:
        with grpc.insecure_channel(spec.address) as channel:
            node = node_grpc.MatcherNodeStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                node.Stats(ops_pb.StatsRequest(), timeout=5)
            err: Any = info.value
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as info:
                node.Stats(ops_pb.StatsRequest(), timeout=5, metadata=((METADATA_KEY, "wrong"),))
            err = info.value
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            # Health stays open for orchestrators; the secret opens the rest.
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            row = node.Stats(
                ops_pb.StatsRequest(),
                timeout=5,
                metadata=((METADATA_KEY, cluster.internal_secret),),
            )
            assert row.name == spec.name


def test_audit_lines_land_in_the_gateway_log_without_keys(cluster: LocalCluster) -> None:
    with client(cluster, "bank-x") as bank, client(cluster, None) as anonymous:
        bank.verify(subject_id(11), probe(11))
        status(lambda: bank.identify(probe(11), k=3))
        status(anonymous.stats)

    def seen() -> bool:
        lines = audit_lines(cluster)
        return (
            any(e["tenant"] == "bank-x" and e.get("subject_id") == subject_id(11) for e in lines)
            and any(e["code"] == "PERMISSION_DENIED" for e in lines)
            and any(e["code"] == "UNAUTHENTICATED" for e in lines)
        )

    wait_for(seen)
    lines = audit_lines(cluster)
    verify = next(e for e in lines if e.get("subject_id") == subject_id(11))
    assert verify["method"] == "Verify" and verify["code"] == "OK" and verify["latency_ms"] > 0
    denied = next(e for e in lines if e["code"] == "PERMISSION_DENIED")
    assert denied["tenant"] == "bank-x" and denied["reason"] == "permission_denied"
    anonymous_line = next(e for e in lines if e["code"] == "UNAUTHENTICATED")
    assert anonymous_line["tenant"] == "-" and anonymous_line["reason"] == "unauthenticated"
    text = (cluster.log_dir / "gateway.log").read_text()
    for key in DEMO_KEYS.values():
        assert key not in text
        assert hash_key(key) not in text
    assert cluster.internal_secret is not None
    for name in ("gateway", "node-0", "node-1"):
        assert cluster.internal_secret not in (cluster.log_dir / f"{name}.log").read_text()


def test_metrics_count_calls_per_tenant(cluster: LocalCluster) -> None:
    with client(cluster, "agency") as agency:
        agency.identify(probe(3), k=3)
    assert cluster.metrics_url is not None
    with urllib.request.urlopen(cluster.metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    assert 'tunggal_gateway_calls_total{code="OK",method="Identify",tenant="agency"}' in text
    assert "tunggal_gateway_overload_limit" in text


def test_sighup_reloads_the_tenants_file(cluster: LocalCluster) -> None:
    assert cluster.tenants_file is not None
    path = Path(cluster.tenants_file)
    with TunggalClient(cluster.address, timeout=10, metadata=bearer(NEW_KEY)) as newcomer:
        assert status(newcomer.stats)[0] == grpc.StatusCode.UNAUTHENTICATED
        extra = (
            f'\n[tenants.newcomer]\napi_key_sha256 = ["{hash_key(NEW_KEY)}"]\nmethods = ["Stats"]\n'
        )
        staged = path.with_suffix(".new")
        staged.write_text(path.read_text() + extra)
        staged.replace(path)
        proc = cluster.gateway_spec.proc
        assert proc is not None
        proc.send_signal(signal.SIGHUP)

        def admitted() -> bool:
            try:
                newcomer.stats()
            except grpc.RpcError:
                return False
            return True

        wait_for(admitted)
    assert proc.poll() is None  # SIGHUP reloads, it does not stop the gateway


def test_gateway_refuses_to_start_without_a_tenants_file() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TUNGGAL_GATEWAY_TENANTS_FILE", "TUNGGAL_GATEWAY_AUTH")
    }
    argv = [sys.executable, "-m", "gateway.server", "--port", str(free_port())]
    result = run_to_exit(argv, env, timeout=60)
    assert result.returncode == 2
    assert "no tenants file" in result.stderr and "--no-auth" in result.stderr
    missing = str(ROOT / "no-such-tenants.toml")
    broken = run_to_exit(argv, {**env, "TUNGGAL_GATEWAY_TENANTS_FILE": missing}, timeout=60)
    assert broken.returncode == 1
    assert "cannot read" in broken.stderr


def test_no_auth_serves_anyone_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "gateway.log"
    argv = [
        sys.executable, "-m", "gateway.server", "--no-auth", "--port", str(port),
        "--metrics-port", "0", "--nodes", f"node-0=127.0.0.1:{free_port()}",
    ]  # fmt: skip
    with gateway_process(argv, port, log) as proc:
        with TunggalClient(f"127.0.0.1:{port}", timeout=10) as anonymous:
            (row,) = anonymous.stats()  # no key needed; the node is down
        assert row.name == "node-0" and row.error
        assert terminate(proc, 20) == 0
    text = log.read_text()
    assert '"event": "gateway_auth_disabled"' in text
    assert '"tenant": "-"' in text and '"method": "Stats"' in text
