"""Orderly stops: SIGTERM (preemption) and Ctrl-C (SIGINT) ask a long loop to stop at its next boundary.

Inside `StopRequest()`, the first SIGTERM or SIGINT only sets `requested` (and says so on stderr); the loop
checks it between steps or batches, saves what it has and returns. A second Ctrl-C exits at once with code
130: whatever is on disk stays consistent, because checkpoints appear by an atomic rename and samples are
appended whole lines at a time. Outside the main thread (where Python cannot install handlers) it is inert.
With several processes, `agreed()` stops them all at the same boundary when any one was signalled.
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

    def agreed(self) -> bool:
        """Whether any process was asked to stop: with several processes they must stop at the same
        boundary (each saves its part of the same checkpoint), so this is a small collective."""
        return bool(agreed_value(int(self.requested), reduce=max))

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            print(f"{name} again: exiting now", file=sys.stderr, flush=True)
            os._exit(130)
        self.requested, self.signal_name = True, name
        extra = " (Ctrl-C again to exit at once)" if signum == signal.SIGINT else ""
        print(f"{name}: stopping after {self.what}{extra}", file=sys.stderr, flush=True)


def agreed_value(value: int, reduce=None) -> int:
    """`value` of process 0 on every process (or `reduce` over all processes' values); itself alone."""
    import jax

    if jax.process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    if reduce is None:
        return int(multihost_utils.broadcast_one_to_all(np.int32(value)))
    return int(reduce(multihost_utils.process_allgather(np.int32(value))))
