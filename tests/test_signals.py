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


WELL_UNDER_A_POLL_S = 5.0
"""Bound on both waits below: far above the default 0.2 s poll, far below the
30 s poll of the event test, so only a wait ended in time by the signal's
handler or by the event passes, not one that sat out a timeout."""


@pytest.mark.timeout(30)
def test_wait_for_runs_the_handler_of_a_signal_another_thread_took() -> None:
    # A plain stop.wait() here never returns, and stop.wait(timeout) only at its
    # timeout: the main thread's lock wait is not interrupted, so CPython runs
    # the handler only when the wait ends on its own.
    assert _signal_taken_by_another_thread(wait_for) < WELL_UNDER_A_POLL_S


@pytest.mark.timeout(60)
def test_wait_for_returns_once_the_event_is_set() -> None:
    stop = threading.Event()
    setter = threading.Timer(0.05, stop.set)
    setter.start()
    started = time.monotonic()
    wait_for(stop, poll_s=30.0)  # only the event can end it well within a poll
    elapsed = time.monotonic() - started
    setter.join()
    assert stop.is_set()
    assert elapsed < WELL_UNDER_A_POLL_S
