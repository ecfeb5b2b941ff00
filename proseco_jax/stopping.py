"""Orderly stops: SIGTERM (preemption) and Ctrl-C (SIGINT) ask a long loop to stop at its next boundary.

Inside `StopRequest()`, the first SIGTERM or SIGINT only sets `requested` (and says so on stderr); the loop
checks it between steps or batches, saves what it has and returns. A second Ctrl-C exits at once with code
130: whatever is on disk stays consistent, because checkpoints appear by an atomic rename and samples are
appended whole lines at a time. Outside the main thread (where Python cannot install handlers) it is inert.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Context manager; `requested` is True once a stop was asked for, `signal_name` says which signal."""

    def __init__(self, what: str = "the current step"):
        self.what = what
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            print(f"{name} again: exiting now", file=sys.stderr, flush=True)
            os._exit(130)
        self.requested, self.signal_name = True, name
        extra = " (Ctrl-C again to exit at once)" if signum == signal.SIGINT else ""
        print(f"{name}: stopping after {self.what}{extra}", file=sys.stderr, flush=True)
