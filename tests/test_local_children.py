"""Children started through tunggal_tools.children die with their parent process,
and only with it: not when the thread that asked for them exits."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from tests.procfs import Child, children_of, wait_gone
from tunggal_tools import children

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only"
    ),
]


def start_sleeper() -> subprocess.Popen[bytes]:
    """`sleep 60`, bound to this process."""
    return children.spawn(
        lambda: subprocess.Popen(
            ["sleep", "60"],  # noqa: S607  any `sleep` on PATH will do
            preexec_fn=children.bound_to_parent(),  # noqa: PLW1509  the preexec_fn under test
        )
    )


@pytest.mark.timeout(60)
def test_a_child_outlives_the_short_lived_thread_that_started_it() -> None:
    started: list[subprocess.Popen[bytes]] = []
    thread = threading.Thread(target=lambda: started.append(start_sleeper()))
    thread.start()
    thread.join()
    [proc] = started
    try:
        time.sleep(1.0)  # the kernel signals at once when the forking thread exits
        assert proc.poll() is None, f"killed with the thread: {proc.returncode}"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(60)
def test_a_child_dies_with_a_parent_killed_by_sigkill() -> None:
    parent = subprocess.Popen(
        [
            sys.executable, "-c",
            (
                "import time, tunggal_tools.children as c, subprocess\n"
                "c.spawn(lambda: subprocess.Popen(['sleep', '60'],"
                " preexec_fn=c.bound_to_parent()))\n"
                "print('started', flush=True)\n"
                "time.sleep(60)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    kids: list[Child] = []
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline() == "started\n"
        kids = children_of(parent.pid)
        assert [k.cmdline for k in kids] == ["sleep 60 "]
        parent.kill()
        parent.wait()
        survivors = wait_gone(kids, timeout=5)
        assert not survivors, "the child outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for kid in kids:
            kid.kill()
