"""A main thread waiting for its stop event still runs signal handlers."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import pytest

from tunggal.signals import wait_for


def _signal_taken_by_another_thread(wait: Callable[[threading.Event], object]) -> float:
    """Seconds `wait(stop)` takes when SIGUSR1, whose handler sets `stop`, is
    delivered to a thread other than the main one (as when a gRPC thread takes it)."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda *_: stop.set())
    done = threading.Event()
    bystander = threading.Thread(target=done.wait, daemon=True)
    bystander.start()
    assert bystander.ident is not None
    sender = threading.Timer(0.1, signal.pthread_kill, (bystander.ident, signal.SIGUSR1))
    try:
        sender.start()
        started = time.monotonic()
        wait(stop)
        return time.monotonic() - started
    finally:
        sender.cancel()
        done.set()
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.timeout(30)
def test_wait_for_runs_the_handler_of_a_signal_another_thread_took() -> None:
    # A plain stop.wait() here never returns: the main thread's lock wait is
    # not interrupted, so CPython never gets to run the handler.
    assert _signal_taken_by_another_thread(wait_for) < 5.0


def test_wait_for_returns_once_the_event_is_set() -> None:
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    wait_for(stop, poll_s=10.0)  # the event wakes it, not the poll
    assert stop.is_set()
