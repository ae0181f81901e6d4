"""`tunggal local` leaves no process behind: SIGTERM or SIGINT at any moment stops
every child within the grace time, and a parent killed with SIGKILL takes its
children with it (Linux: PR_SET_PDEATHSIG, tunggal_tools/children.py).

Real processes throughout: the `tunggal` console script, its nodes and its
gateway. Children are found from /proc (their parent pid), each remembered with
its start time so that a reused pid is never mistaken for it.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port_run
from tests.procfs import Child, children_of, wait_gone, wait_ports_free
from tunggal.settings import GatewaySettings, NodeSettings

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

SEEDING = b"enrolling demo gallery:"
"""What `tunggal local` writes while it seeds (a progress line ended by \\r, not \\n)."""
BIG_GALLERY = 200_000
"""Far more subjects than any machine seeds before the test's signal lands."""
STOP_MARGIN_S = 20.0
"""Time allowed beyond the processes' grace: interpreter exits and the nodes' snapshots."""
GONE_AFTER_PARENT_KILL_S = 5.0
PORTS_FREE_S = 5.0
"""How long a gone process's listening sockets may take to close (its threads' exits)."""


def _grace_s() -> float:
    return max(NodeSettings().grace_s, GatewaySettings().grace_s)


class LocalRun:
    """`tunggal local` on free ports under a temporary directory, its output read raw."""

    def __init__(self, tmp_path: Path, subjects: int) -> None:
        self.port = free_port_run(3)
        self.ports = [self.port, self.port + 1, self.port + 2]
        self.data_dir = tmp_path / "data"
        tunggal = str(Path(sys.executable).parent / "tunggal")
        args = ["local", "--data-dir", str(self.data_dir), "--port", str(self.port)]
        args += ["--subjects", str(subjects), "--metrics-port", "0"]
        self.proc = subprocess.Popen(
            [tunggal, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.output = b""
        self.seen: dict[int, Child] = {}

    def read_until(self, marker: bytes, timeout: float) -> None:
        """Read the output until it holds `marker`; fail on exit or after `timeout` s."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {marker!r} within {timeout:.0f} s:\n{self.text()}")
            if select.select([fd], [], [], min(left, 0.5))[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    pytest.fail(f"exited before {marker!r}:\n{self.text()}")
                self.output += chunk

    def children(self) -> list[Child]:
        """Its live children now; every child ever seen is remembered in `seen`."""
        now = children_of(self.proc.pid)
        self.seen.update((child.pid, child) for child in now)
        return now

    def finish(self, timeout: float) -> float:
        """Wait up to `timeout` s for the parent to exit; return how long it took."""
        started = time.monotonic()
        try:
            rest, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {timeout:.0f} s after the signal:\n{self.text()}")
        self.output += rest
        return time.monotonic() - started

    def text(self) -> str:
        return self.output.decode(errors="replace").replace("\r", "\n")

    def cleanup(self) -> None:
        """Kill whatever a failed test left running: the parent, then every child seen."""
        if self.proc.poll() is None:
            self.children()
            self.proc.kill()
            self.proc.communicate()
        for child in self.seen.values():
            child.kill()


def the_cluster_processes(run: LocalRun) -> list[Child]:
    """Both nodes and the gateway, as children of the running `tunggal local`."""
    kids = run.children()
    names = sorted(
        "gateway" if "gateway.server" in k.cmdline else k.cmdline.split("--name ")[1].split()[0]
        for k in kids
    )
    assert names == ["gateway", "node-0", "node-1"], [k.cmdline for k in kids]
    return kids


@pytest.fixture
def seeding(tmp_path: Path) -> Iterator[LocalRun]:
    """`tunggal local` over BIG_GALLERY once it is seeding; cleaned up after the test."""
    run = LocalRun(tmp_path, BIG_GALLERY)
    try:
        run.read_until(SEEDING, timeout=180)
        yield run
    finally:
        run.cleanup()


@pytest.mark.timeout(300)
def test_sigterm_while_seeding_stops_every_process_within_the_grace_time(
    seeding: LocalRun,
) -> None:
    kids = the_cluster_processes(seeding)
    seeding.proc.send_signal(signal.SIGTERM)
    took = seeding.finish(timeout=_grace_s() + STOP_MARGIN_S)
    text = seeding.text()
    assert seeding.proc.returncode == 0, text
    assert "stopping (draining, snapshotting)" in text
    assert "Serving:" not in text, "seeding went on after SIGTERM"
    assert f"{BIG_GALLERY:,}/{BIG_GALLERY:,}" not in text
    assert not [k.cmdline for k in kids if k.alive()], f"left running ({took:.1f} s)"
    assert wait_ports_free(seeding.ports, PORTS_FREE_S) == []


@pytest.mark.timeout(300)
def test_sigkill_of_the_parent_while_seeding_takes_every_child_with_it(seeding: LocalRun) -> None:
    kids = the_cluster_processes(seeding)
    seeding.proc.kill()
    seeding.proc.wait(timeout=10)
    survivors = wait_gone(kids, GONE_AFTER_PARENT_KILL_S)
    assert not survivors, [k.cmdline for k in survivors]
    assert wait_ports_free(seeding.ports, PORTS_FREE_S) == []


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_start_up_stops_the_nodes_before_the_gateway_is_started(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """node-0 is frozen (SIGSTOP) as soon as it runs, so `tunggal local` is certainly
    still waiting for it to serve when the signal lands."""
    run = LocalRun(tmp_path, subjects=2000)
    frozen: Child | None = None
    try:
        deadline = time.monotonic() + 60
        while frozen is None:
            assert time.monotonic() < deadline, f"node-0 never started:\n{run.text()}"
            assert run.proc.poll() is None, run.text()
            frozen = next((k for k in run.children() if "--name node-0" in k.cmdline), None)
            time.sleep(0.01)
        os.kill(frozen.pid, signal.SIGSTOP)
        while len(run.children()) < 2:  # node-1 is forked right after node-0
            assert time.monotonic() < deadline, f"node-1 never started:\n{run.text()}"
            time.sleep(0.01)
        node0_log = run.data_dir / "logs" / "node-0.log"
        assert "node_serving" not in node0_log.read_text(), "node-0 served before the freeze"
        run.proc.send_signal(sig)
        os.kill(frozen.pid, signal.SIGCONT)  # it then gets the stop the parent sends
        run.finish(timeout=_grace_s() + STOP_MARGIN_S)
        text = run.text()
        assert run.proc.returncode == 0, text
        assert "stopping (draining, snapshotting)" in text
        assert not (run.data_dir / "logs" / "gateway.log").exists(), "start-up went on"
        assert SEEDING.decode() not in text
        assert not [k.cmdline for k in run.seen.values() if k.alive()]
        assert wait_ports_free(run.ports, PORTS_FREE_S) == []
    finally:
        if frozen is not None and frozen.alive():
            os.kill(frozen.pid, signal.SIGCONT)
        run.cleanup()
