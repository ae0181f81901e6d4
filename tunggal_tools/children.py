"""Child processes that do not outlive this one.

`bound_to_parent()` is a ``preexec_fn`` for `subprocess.Popen`: the child asks
the kernel (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) to be killed when its parent
dies, so even a parent killed with SIGKILL leaves no node or gateway behind
holding its ports. SIGKILL, not SIGTERM: an orphan has nobody left to reap it
or to enforce its grace time, and every acknowledged write is already durable
(the node's SQLite log), so the only loss is the snapshot a drain would write.

The kernel sends that signal when the *thread* that forked the child exits,
not when the process does. So every child is forked by `spawn`'s thread,
which lives as long as the process: a cluster started, or a node restarted,
from a short-lived thread keeps its processes.

Linux only. Elsewhere `bound_to_parent()` is None: the children are plain
children, stopped by `LocalCluster.stop` but orphaned by a parent killed
with SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from tunggal.signals import POLL_S

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1
"""From <linux/prctl.h>."""


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved in the parent so the forked child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl  # type: ignore[no-any-return]


_PRCTL = _load_prctl()


def bound_to_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die (SIGKILL) with this process; None off Linux."""
    prctl = _PRCTL
    if prctl is None:
        return None
    parent_pid = os.getpid()

    def die_with_parent() -> None:  # runs in the child, between fork and exec
        if prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The parent may have died after the fork and before the line above:
        # then nobody will send the signal, and the child is already an orphan.
        if os.getppid() != parent_pid:
            os._exit(1)

    return die_with_parent


class _SpawnerThread:
    """One daemon thread that runs jobs (forks) in order, for the life of the process."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="tunggal-spawner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as err:  # noqa: BLE001  the job's error, any, is its waiter's
                future.set_exception(err)

    def submit(self, job: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((job, future))
        return future


class _Spawner:
    """The process's spawner thread, started on first use (again in a forked child,
    which does not inherit threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: _SpawnerThread | None = None
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._thread = None

    def submit(self, job: Callable[[], T]) -> Future[T]:
        with self._lock:
            if self._thread is None:
                self._thread = _SpawnerThread()
            return self._thread.submit(job)


_SPAWNER = _Spawner()


def spawn(job: Callable[[], T]) -> T:
    """Run `job` (which starts child processes) on the spawner thread; return its result.

    Jobs run one at a time, in the order asked. The wait wakes every
    `POLL_S` so the main thread's signal handlers run; when one raises,
    `job` still runs to its end: record the children it starts inside `job`.
    """
    future = _SPAWNER.submit(job)
    while True:
        try:
            return future.result(timeout=POLL_S)
        except TimeoutError:
            if future.done():  # `job` itself raised TimeoutError
                raise


def settle() -> None:
    """Return once every job given to `spawn` so far has run."""
    spawn(lambda: None)
