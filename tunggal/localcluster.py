"""A cluster of real processes on 127.0.0.1: N matcher nodes and a gateway.

Used by `tunggal local` (the README's run command), the integration tests and
the benchmarks. Each process is started with the current interpreter, logs
to `<data_dir>/logs/<name>.log`, and is waited for until its gRPC health
check says SERVING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


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
    """Gateway on `base_port`, nodes on the ports after it."""

    data_dir: Path
    base_port: int = 50051
    nodes: int = 2
    dim: int = 128
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 120.0
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
        self.gateway_spec = ProcessSpec(
            name="gateway",
            port=self.base_port,
            argv=[
                sys.executable, "-m", "gateway.server",
                "--port", str(self.base_port),
                "--nodes", node_list,
                "--dim", str(self.dim),
            ],
        )  # fmt: skip

    @property
    def address(self) -> str:
        """The gateway's address."""
        return self.gateway_spec.address

    @property
    def log_dir(self) -> Path:
        """Where each process's log file lives."""
        return self.data_dir / "logs"

    def _spawn(self, spec: ProcessSpec) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        with (self.log_dir / f"{spec.name}.log").open("ab") as log:
            spec.proc = subprocess.Popen(
                spec.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def start(self) -> LocalCluster:
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
        """SIGTERM everything (gateway first), wait, SIGKILL stragglers."""
        specs = [self.gateway_spec, *self.node_specs]
        for spec in specs:
            if spec.proc is not None and spec.proc.poll() is None:
                spec.proc.send_signal(signal.SIGTERM)
        for spec in specs:
            if spec.proc is None:
                continue
            try:
                spec.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                spec.proc.kill()
                spec.proc.wait()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
