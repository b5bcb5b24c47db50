"""The relay's stop request, set from a signal handler while the loop sleeps: noticed within a
slice of the sleep, and never a deadlock (as `threading.Event.set` from a handler can be)."""

from __future__ import annotations

import signal
import time

from app.core.outbox_relay import SignalStop


def test_a_signal_during_the_sleep_ends_it_promptly() -> None:
    stop = SignalStop()
    previous = signal.signal(signal.SIGALRM, lambda *_: stop.set())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        started = time.monotonic()
        assert stop.wait(5.0) is True
        assert time.monotonic() - started < 0.1 + 2 * SignalStop.SLICE + 0.2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert stop.is_set()


def test_without_a_request_it_sleeps_the_whole_timeout() -> None:
    stop = SignalStop()
    started = time.monotonic()
    assert stop.wait(0.12) is False
    assert time.monotonic() - started >= 0.12
