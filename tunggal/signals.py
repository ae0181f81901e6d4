"""Waiting in the main thread so that signal handlers still run.

CPython runs a Python signal handler only in the main thread, between
bytecodes. A main thread blocked without a timeout in `threading.Event.wait`
may never reach one: when the signal is taken by another thread (gRPC's
threads among them), the main thread's lock wait is not interrupted, and a
SIGINT or SIGTERM is never acted on. Waking up now and then fixes that.
"""

from __future__ import annotations

import threading

POLL_S = 0.2
"""How often the waiting main thread wakes to let pending signal handlers run."""


def wait_for(event: threading.Event, poll_s: float = POLL_S) -> None:
    """Block until `event` is set, waking every `poll_s` so signal handlers run."""
    while not event.wait(poll_s):
        pass
