"""Shared fixtures: free ports, real node processes, real local clusters."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import structlog

from tunggal.client import bearer
from tunggal.node.v1 import node_pb2_grpc as node_grpc
from tunggal.templates import encode_template
from tunggal.v1 import tunggal_pb2 as pb
from tunggal_tools.localcluster import LocalCluster, wait_serving
from tunggal_tools.synthetic import FaceModel, subject_id

ROOT = Path(__file__).resolve().parent.parent
"""The repository: the working directory of the processes tests start."""
TEST_TENANTS = Path(__file__).resolve().parent / "tenants.test.toml"
"""One tenant, all-methods: every method, no quota, critical priority."""
TEST_KEY = "test-key-all-methods"
TEST_AUTH = bearer(TEST_KEY)
"""Call metadata of the all-methods test tenant."""


_PROCESS_FIXTURES = frozenset({"node", "node_stub", "cluster_factory"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `cluster` every test that starts Tunggal processes through a fixture."""
    for item in items:
        if _PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_run(length: int) -> int:
    """The first of `length` consecutive free ports."""
    for _ in range(200):
        base = free_port()
        if base + length >= 65535:
            continue
        socks = []
        try:
            for p in range(base, base + length):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
        except OSError:
            continue
        else:
            return base
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports found")


def enroll_on_node(
    stub: node_grpc.MatcherNodeStub, ids: Sequence[int], model: FaceModel, capture: int = 0
) -> None:
    """EnrollBatch identities `ids` (one template each, capture `capture` of
    `model`) straight into a node; asserts every item was enrolled."""
    templates = model.samples(ids, capture)
    reply = stub.EnrollBatch(
        pb.EnrollBatchRequest(
            items=[
                pb.EnrollRequest(
                    subject_id=subject_id(i),
                    templates=[encode_template(v)],
                    mode=pb.ENROLL_MODE_APPEND,
                )
                for i, v in zip(ids, templates, strict=True)
            ]
        ),
        timeout=120,
    )
    assert [r.code for r in reply.results] == [0] * len(ids)


def replace_while_verifying(
    replace: Callable[[int], object], verify: Callable[[], bool], replaces: int, verifiers: int
) -> int:
    """Call replace(n) for each n < `replaces` in one thread while `verifiers`
    threads call verify() over and over until it is done; how many verify()
    calls answered (returned True). A thread's failure is raised here."""
    done = threading.Event()

    def replacer() -> None:
        try:
            for n in range(replaces):
                replace(n)
        finally:
            done.set()

    def verifier() -> int:
        answered = 0
        while not done.is_set():
            if verify():
                answered += 1
        return answered

    with ThreadPoolExecutor(verifiers + 1) as pool:
        running = [pool.submit(verifier) for _ in range(verifiers)]
        pool.submit(replacer).result()
        return sum(v.result() for v in running)


@contextmanager
def gateway_process(
    argv: Sequence[str], port: int, log: Path, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A real gateway process started with `argv` in ROOT, its output in `log`,
    once it serves on 127.0.0.1:`port`; killed on the way out if still running."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_serving(f"127.0.0.1:{port}", 30, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_to_exit(
    argv: Sequence[str], env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a command in ROOT that should exit by itself (a refused start): its
    status and text output; subprocess.TimeoutExpired if it runs past `timeout`."""
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM `proc` and wait up to `timeout` seconds for it; its exit status."""
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


class NodeProcess:
    """One real matcher node process on a free port."""

    def __init__(self, data_dir: Path, name: str = "node-0", extra: list[str] | None = None):
        self.data_dir = data_dir
        self.name = name
        self.extra = extra or []
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{name}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> NodeProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "matcher.server",
                    "--name", self.name, "--port", str(self.port),
                    "--data-dir", str(self.data_dir), *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_serving(self.address, 60, self.proc)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=60)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    """A fresh matcher node process (dim 128) with its own data directory."""
    proc = NodeProcess(tmp_path / "node-0").start()
    yield proc
    proc.kill()


@pytest.fixture
def node_stub(node: NodeProcess) -> Iterator[node_grpc.MatcherNodeStub]:
    """A MatcherNode stub connected to `node`."""
    with grpc.insecure_channel(node.address) as channel:
        yield node_grpc.MatcherNodeStub(channel)


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[type[LocalCluster]]:
    """Makes LocalClusters on free ports under tmp_path; stops them at the end.

    The gateway uses the test tenants (TEST_TENANTS) unless `tenants_file` is given.
    """
    made: list[LocalCluster] = []

    class _Factory(LocalCluster):
        def __init__(self, data_dir: Path | None = None, nodes: int = 2, **kw: object) -> None:
            kw.setdefault("tenants_file", TEST_TENANTS)
            super().__init__(
                data_dir=data_dir or tmp_path / "cluster",
                base_port=free_port_run(nodes + 1),
                nodes=nodes,
                **kw,  # type: ignore[arg-type]
            )
            made.append(self)

    yield _Factory
    for cluster in made:
        cluster.stop(timeout=20)


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    """Every structlog line, as JSON, into a buffer."""
    buf = io.StringIO()
    structlog.reset_defaults()  # drop filters an earlier configure() left behind
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=buf),
        cache_logger_on_first_use=False,
    )
    yield buf
    structlog.reset_defaults()
