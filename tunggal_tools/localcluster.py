"""A cluster of real processes on 127.0.0.1: N matcher nodes and a gateway.

Used by `tunggal local` (the README's run command), the integration tests and
the benchmarks. Each process is started with the current interpreter, logs
to `<data_dir>/logs/<name>.log`, and is waited for until its gRPC health
check says SERVING. Every process runs in a session of its own (a terminal's
Ctrl-C reaches only the parent, which stops them in order) and dies with
the parent, even a parent killed with SIGKILL (Linux; tunggal_tools/children.py).

The gateway authenticates callers with `tenants_file` (the demo tenants of
deploy/tenants.demo.toml by default; None starts it with ``--no-auth``) and
serves /metrics on `metrics_port` (0: off). Every process gets a random
internal secret (``TUNGGAL_INTERNAL_SECRET``), fresh per cluster, so the
nodes answer the gateway only.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.tenants import METHODS, Priority, Tenant, dump_tenants, hash_key
from tunggal.internal_auth import SECRET_ENV
from tunggal_tools import children

REPO = Path(__file__).resolve().parent.parent
DEMO_TENANTS_FILE = REPO / "deploy" / "tenants.demo.toml"
"""The demo tenants (keys public, `tunggal_tools.demo.DEMO_KEYS`)."""


def write_all_methods_tenants(
    path: Path, key: str, tenant_id: str = "all-methods", priority: Priority = Priority.CRITICAL
) -> Path:
    """Write a tenants file with one tenant holding `key` that may call every
    method without quota: for tests and benchmarks only. Returns `path`."""
    tenant = Tenant.model_validate(
        {
            "id": tenant_id,
            "api_key_sha256": [hash_key(key)],
            "methods": sorted(METHODS),
            "priority": priority,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Generated for a test or benchmark run: one tenant, every method, no quota.\n"
        + dump_tenants([tenant])
    )
    return path


def wait_serving(address: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until `address` reports SERVING on gRPC health, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process for {address} exited with code {proc.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{address} did not become SERVING within {timeout:.0f} s")


@dataclass
class ProcessSpec:
    """How to start one cluster process."""

    name: str
    port: int
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """host:port it listens on."""
        return f"127.0.0.1:{self.port}"


@dataclass
class LocalCluster:
    """Gateway on `base_port`, nodes on the ports after it.

    `tenants_file` None runs the gateway without authentication;
    `metrics_port` 0 turns /metrics off; `internal_secret` None lets anyone
    call the nodes; `code_dir` runs the processes from another checkout of
    Tunggal (its matcher/, gateway/ and tunggal/ packages) instead of this
    one, so benchmarks can compare two commits side by side.
    """

    data_dir: Path
    base_port: int = 50051
    nodes: int = 2
    dim: int = 128
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 120.0
    tenants_file: Path | None = DEMO_TENANTS_FILE
    metrics_port: int = 0
    internal_secret: str | None = field(
        default_factory=lambda: secrets.token_urlsafe(32), repr=False
    )
    code_dir: Path | None = None
    node_specs: list[ProcessSpec] = field(init=False)
    gateway_spec: ProcessSpec = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.node_specs = [
            ProcessSpec(
                name=f"node-{i}",
                port=self.base_port + 1 + i,
                argv=[
                    sys.executable, "-m", "matcher.server",
                    "--name", f"node-{i}",
                    "--port", str(self.base_port + 1 + i),
                    "--data-dir", str(self.data_dir / f"node-{i}"),
                    "--dim", str(self.dim),
                ],
            )
            for i in range(self.nodes)
        ]  # fmt: skip
        node_list = ",".join(f"{s.name}={s.address}" for s in self.node_specs)
        auth = (
            ["--no-auth"]
            if self.tenants_file is None
            else ["--tenants", str(Path(self.tenants_file).resolve())]
        )
        self.gateway_spec = ProcessSpec(
            name="gateway",
            port=self.base_port,
            argv=[
                sys.executable, "-m", "gateway.server",
                "--port", str(self.base_port),
                "--nodes", node_list,
                "--dim", str(self.dim),
                "--metrics-port", str(self.metrics_port),
                *auth,
            ],
        )  # fmt: skip

    @property
    def address(self) -> str:
        """The gateway's address."""
        return self.gateway_spec.address

    @property
    def metrics_url(self) -> str | None:
        """The gateway's /metrics URL, or None when it is off."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else None

    @property
    def log_dir(self) -> Path:
        """Where each process's log file lives."""
        return self.data_dir / "logs"

    def process_env(self) -> dict[str, str]:
        """The environment every process starts with."""
        env = {**os.environ, **self.env}
        env.pop(SECRET_ENV, None)
        if self.internal_secret:
            env[SECRET_ENV] = self.internal_secret
        return env

    def _spawn(self, spec: ProcessSpec) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = self.process_env()

        def start() -> None:  # on the spawner thread; it records the process itself
            with (self.log_dir / f"{spec.name}.log").open("ab") as log:
                spec.proc = subprocess.Popen(
                    spec.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.code_dir,  # `python -m` imports from its working directory first
                    start_new_session=True,
                    preexec_fn=children.bound_to_parent(),  # noqa: PLW1509  fork-safe: prctl
                )

        children.spawn(start)

    def start(self) -> Self:
        """Start every node, then the gateway; return when all are SERVING."""
        for spec in self.node_specs:
            self._spawn(spec)
        for spec in self.node_specs:
            wait_serving(spec.address, self.start_timeout, spec.proc)
        self._spawn(self.gateway_spec)
        wait_serving(self.address, self.start_timeout, self.gateway_spec.proc)
        return self

    def start_node(self, i: int) -> None:
        """(Re)start node i and wait until it is SERVING."""
        spec = self.node_specs[i]
        self._spawn(spec)
        wait_serving(spec.address, self.start_timeout, spec.proc)

    def kill_node(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to node i (SIGKILL by default: a crash) and reap it."""
        proc = self.node_specs[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=60)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the gateway, then the nodes: SIGTERM, `timeout` s to drain, then SIGKILL.

        The gateway goes first so the calls it drains still reach the nodes;
        the nodes then drain what is left and write their snapshots.
        """
        children.settle()  # a start interrupted by a signal may still be forking one
        _terminate([self.gateway_spec], timeout)
        _terminate(self.node_specs, timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(specs: list[ProcessSpec], timeout: float) -> None:
    """SIGTERM every running process of `specs`; SIGKILL those still up after `timeout` s."""
    procs = [spec.proc for spec in specs if spec.proc is not None]
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
