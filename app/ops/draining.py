"""The process is draining: it got SIGTERM and is finishing its in-flight work.

gunicorn's `post_worker_init` (gunicorn.conf.py) calls `drain_on(SIGTERM)` in every worker, so
from the moment the worker is told to stop, `/ready` answers 503 `draining` to anything that
still reaches it (a keep-alive connection, a threaded worker), while the requests in flight run
to completion. The flag is per process, like the signal.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

_draining = threading.Event()


def is_draining() -> bool:
    return _draining.is_set()


def mark_draining() -> None:
    _draining.set()


def reset() -> None:
    """For tests: the process serves again."""
    _draining.clear()


def drain_on(signum: int) -> None:
    """Mark the process draining when `signum` arrives, then run the handler it had before."""
    previous: Any = signal.getsignal(signum)

    def handler(sig: int, frame: FrameType | None) -> None:
        mark_draining()
        if callable(previous):
            previous(sig, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    signal.signal(signum, handler)
