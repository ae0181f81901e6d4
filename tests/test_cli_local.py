"""The README's run command (`tunggal local`) as a user runs it, on a small gallery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port_run

pytestmark = pytest.mark.cluster  # starts real Tunggal processes


def _log_tails(log_dir: Path, lines: int = 15) -> str:
    """The last lines of every cluster process's log, for a failure message."""
    out = []
    for log in sorted(log_dir.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log.name}:\n" + "\n".join(tail))
    return "\n".join(out) or f"no logs in {log_dir}"


@pytest.mark.timeout(300)
def test_local_cluster_answers_then_stops_on_ctrl_c_even_with_sigint_ignored(
    tmp_path: Path,
) -> None:
    port = free_port_run(3)
    tunggal = str(Path(sys.executable).parent / "tunggal")
    args = ["local", "--data-dir", str(tmp_path / "data"), "--port", str(port)]
    args += ["--subjects", "2000", "--metrics-port", "0"]
    proc = subprocess.Popen(
        [tunggal, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A script's background job inherits SIGINT ignored: Ctrl-C must still work.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509  takes no lock
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 240
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C to stop." in line or time.monotonic() > deadline:
                break
        text = "".join(lines)
        assert "Press Ctrl-C to stop." in text, text
        assert "-> MATCH" in text and "-> no match" in text  # verify: genuine, impostor
        assert "2/2 shards" in text and f"127.0.0.1:{port}" in text
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("no stop within 120 s of Ctrl-C; " + _log_tails(tmp_path / "data" / "logs"))
    finally:
        if proc.poll() is None:  # SIGTERM stops the nodes too; a kill would orphan them
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, rest
    assert "stopping (draining, snapshotting)" in rest
    # The nodes were stopped too (they run in their own sessions): their snapshots exist.
    assert list((tmp_path / "data").glob("node-*/snapshots/*/manifest.json"))
