"""Processes seen through Linux's /proc: children of a pid, alive or gone, ports held."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Child:
    """A process, identified by pid and start time (a pid alone may be reused)."""

    pid: int
    start_time: int
    cmdline: str

    def alive(self) -> bool:
        """Running or stopped (not a zombie, not gone, not a new process on a reused pid)."""
        stat = _stat(self.pid)
        return stat is not None and stat[19] == str(self.start_time) and stat[0] not in "ZX"

    def kill(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def children_of(parent: int) -> list[Child]:
    """The live processes whose parent is `parent` (whichever of its threads forked them)."""
    found = []
    for proc in Path("/proc").iterdir():
        entry = proc.name
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is None or stat[1] != str(parent) or stat[0] in "ZX":
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        found.append(Child(int(entry), int(stat[19]), cmdline.decode(errors="replace")))
    return found


def port_free(port: int) -> bool:
    """No listener holds `port` on 127.0.0.1 (TIME_WAIT of old connections aside)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def _until_none(pending: Callable[[], list[T]], timeout: float, interval: float) -> list[T]:
    """Poll `pending()` until it is empty or `timeout` s pass; what it last returned."""
    deadline = time.monotonic() + timeout
    while True:
        left = pending()
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(interval)


def wait_ports_free(ports: list[int], timeout: float) -> list[int]:
    """Poll until every one of `ports` is free or `timeout` s pass; return those still held.

    A process killed with SIGKILL shows as a zombie (or vanishes) once its main
    thread has exited, while its other threads may still be closing the sockets
    they share: the ports come free a moment later.
    """
    return _until_none(lambda: [p for p in ports if not port_free(p)], timeout, 0.05)


def wait_gone(children: list[Child], timeout: float) -> list[Child]:
    """Poll until none of `children` is alive or `timeout` s pass; return the survivors."""
    return _until_none(lambda: [c for c in children if c.alive()], timeout, 0.1)
